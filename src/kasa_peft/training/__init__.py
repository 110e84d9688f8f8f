"""Training: the methods compared (KaSA and baselines), the Trainer integration, an own-loop helper."""

from .loop import kasa_loss, param_groups
from .methods import (
    METHODS, MethodSpec, PreparedModel, classification_head_names, load_trained, prepare_model,
)
from .trainer import KasaTrainer

__all__ = ["METHODS", "KasaTrainer", "MethodSpec", "PreparedModel", "classification_head_names", "kasa_loss",
           "load_trained", "param_groups", "prepare_model"]
