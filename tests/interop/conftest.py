"""Session fixture: tiny saved bases and adapters, built once."""

import pytest

from .support import Setup, build_setups


@pytest.fixture(scope="session")
def setups(tmp_path_factory) -> dict[str, Setup]:
    return build_setups(tmp_path_factory.mktemp("interop"))
