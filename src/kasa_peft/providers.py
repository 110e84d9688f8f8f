"""Which integration module reads the layers of which quantization package (see `kasa_peft.core.quantized`), and
which one a model of a given library gets when KaSA adapts it (see `kasa_peft.core.model.inject`).

Plain data, without torch, so that ``kasa_peft`` can declare its integrations when imported and ``kasa-peft
--help`` still loads nothing heavy; the core imports a provider only when it meets a layer or model of its package.
"""

from __future__ import annotations

QUANTIZATION_PROVIDERS: dict[str, tuple[str, str]] = {}  # package -> (module registering its layers, what it supports)


def register_quantization_provider(package: str, module: str, supports: str) -> None:
    """Declare that importing ``module`` registers the layers of top-level package ``package`` (``supports`` says
    which, for error messages); it is imported when a layer of ``package`` is first met."""
    QUANTIZATION_PROVIDERS[package] = (module, supports)


# top-level package of a model class -> module whose ``on_adapted(model)`` runs when KaSA first adapts such a model
MODEL_INTEGRATIONS: dict[str, str] = {}


def register_model_integration(package: str, module: str) -> None:
    """Declare that ``module``'s ``on_adapted(model)`` must run when ``inject`` adapts a model whose class (or one of
    its base classes) comes from top-level package ``package`` (e.g. to make ``save_pretrained`` write the adapter)."""
    MODEL_INTEGRATIONS[package] = module
