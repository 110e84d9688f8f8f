"""KaSA adapters for llama.cpp: a LoRA adapter GGUF, or the merged model as one GGUF file."""

from .adapter import ModulesToSaveInAdapter, export_gguf_adapter
from .merged import export_merged_gguf
from .naming import UnsupportedArchitecture

__all__ = ["ModulesToSaveInAdapter", "UnsupportedArchitecture", "export_gguf_adapter", "export_merged_gguf"]
