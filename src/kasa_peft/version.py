"""The package version, written here only: pyproject.toml reads it (``dynamic = ["version"]``)."""

__version__ = "0.2.2"
