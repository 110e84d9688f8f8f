"""Training: the methods compared (KaSA and baselines), the Trainer integration, an own-loop helper.

The names below are imported on first use, so that checking a method name (``method_names``) loads no torch.
"""

import importlib

_EXPORTS = {
    "kasa_loss": "loop", "param_groups": "loop", "METHODS": "method_names", "MethodSpec": "methods",
    "PreparedModel": "methods", "classification_head_names": "methods", "load_trained": "methods",
    "prepare_model": "methods", "KasaTrainer": "trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
