"""kasa-peft: KaSA (Knowledge-aware Singular-value Adaptation) for PyTorch and Hugging Face models.

The public API is the core's (``kasa_peft.core``); it is imported on first use, so that the ``kasa-peft``
command answers ``--help`` and argument errors without loading torch.
"""

from .lazy import lazy_getattr
from .providers import register_model_integration, register_quantization_provider
from .version import __version__

# bitsandbytes layers are read through kasa_peft.models.bitsandbytes, imported when the first one is met
register_quantization_provider("bitsandbytes", "kasa_peft.models.bitsandbytes",
                               "bitsandbytes Linear4bit (NF4, FP4, double quantization) and Linear8bitLt")
# an adapted transformers model's save_pretrained writes its KaSA adapter (kasa_peft.integrations.save_pretrained)
register_model_integration("transformers", "kasa_peft.integrations.save_pretrained")

_CORE = (
    "DroppedComponents", "KasaAdapter", "KasaConfig", "KasaLayer", "ModulesToSave", "ParameterCount",
    "RegularizationTerms", "adapters_per_example", "delete_adapter", "disable_adapters", "dropped_components",
    "inject", "kasa_layers", "kasa_state", "load_adapter", "merge", "merge_and_unload", "orthogonality_penalty",
    "read_adapter", "regularization_loss", "regularization_terms", "restore_adapter", "save_adapter", "set_adapter",
    "singular_value_penalty", "target_layer_names", "trainable_parameters", "truncate_smallest", "unload", "unmerge",
    "weight_fingerprint",
)
__all__ = [*_CORE, "__version__"]

__getattr__ = lazy_getattr(__name__, dict.fromkeys(_CORE, "core"))


def __dir__() -> list[str]:
    return sorted(__all__)
