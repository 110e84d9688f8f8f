"""The method itself, with torch as its only dependency."""

from .config import KasaConfig
from .fingerprint import weight_fingerprint
from .io import load_adapter, read_adapter, restore_adapter, save_adapter
from .layer import KasaAdapter, KasaLayer, ModulesToSave
from .model import (
    ParameterCount, adapters_per_example, delete_adapter, disable_adapters, dropped_components, inject, kasa_layers,
    kasa_state, merge, merge_and_unload, set_adapter, target_layer_names, trainable_parameters, unload, unmerge,
)
from .regularization import (
    RegularizationTerms, orthogonality_penalty, regularization_loss, regularization_terms, singular_value_penalty,
)
from .truncation import DroppedComponents, truncate_smallest

__all__ = [
    "DroppedComponents", "KasaAdapter", "KasaConfig", "KasaLayer", "ModulesToSave", "ParameterCount",
    "RegularizationTerms", "adapters_per_example", "delete_adapter", "disable_adapters", "dropped_components",
    "inject", "kasa_layers", "kasa_state", "load_adapter", "merge", "merge_and_unload", "orthogonality_penalty",
    "read_adapter", "regularization_loss", "regularization_terms", "restore_adapter", "save_adapter", "set_adapter",
    "singular_value_penalty", "target_layer_names", "trainable_parameters", "truncate_smallest", "unload", "unmerge",
    "weight_fingerprint",
]
