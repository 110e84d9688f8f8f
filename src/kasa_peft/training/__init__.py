"""Training: the methods compared (KaSA and baselines), the Trainer integration, an own-loop helper.

The names below are imported on first use, so that checking a method name (``method_names``) loads no torch.
"""

from ..lazy import lazy_getattr

_EXPORTS = {
    "kasa_loss": "loop", "param_groups": "loop", "METHODS": "method_names", "MethodSpec": "methods",
    "PreparedModel": "methods", "classification_head_names": "methods", "load_trained": "methods",
    "prepare_model": "methods", "KasaTrainer": "trainer", "KasaTrainerMixin": "trainer",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
