"""Which integration module reads the layers of which quantization package (see `kasa_peft.core.quantized`).

Plain data, without torch, so that ``kasa_peft`` can declare its integrations when imported and ``kasa-peft
--help`` still loads nothing heavy; the core imports a provider only when it meets a layer of its package.
"""

from __future__ import annotations

QUANTIZATION_PROVIDERS: dict[str, tuple[str, str]] = {}  # package -> (module registering its layers, what it supports)


def register_quantization_provider(package: str, module: str, supports: str) -> None:
    """Declare that importing ``module`` registers the layers of top-level package ``package`` (``supports`` says
    which, for error messages); it is imported when a layer of ``package`` is first met."""
    QUANTIZATION_PROVIDERS[package] = (module, supports)
