"""kasa-peft: KaSA (Knowledge-aware Singular-value Adaptation) for PyTorch and Hugging Face models."""

from .core import *  # noqa: F403  (the public API is the core's)
from .core import __all__ as _core_all
from .version import __version__

__all__ = [*_core_all, "__version__"]
