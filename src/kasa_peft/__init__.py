"""kasa-peft: KaSA (Knowledge-aware Singular-value Adaptation) for PyTorch and Hugging Face models."""

from .core import *  # noqa: F403  (the public API is the core's)
from .core import __all__ as _core_all
from .core.quantized import register_quantization_provider
from .version import __version__

# bitsandbytes layers are read through kasa_peft.interop.bitsandbytes, imported when the first one is met
register_quantization_provider("bitsandbytes", "kasa_peft.interop.bitsandbytes",
                               "bitsandbytes Linear4bit (NF4, FP4, double quantization) and Linear8bitLt")

__all__ = [*_core_all, "__version__"]
