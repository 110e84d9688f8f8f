"""Sharing and serving KaSA adapters: PEFT / LoRA / merged / GGUF exports, PEFT import, several adapters on
one base, weighted combination, and the commands that do these.

The analysis names (``inspect_adapter``, ``truncation_report``, ...) live in `kasa_peft.analysis` and are
re-exported here, where earlier releases documented them."""

from ..analysis import (
    format_inspection, format_truncation_report, inspect_adapter, plot_adapter, plot_spectra, truncation_report,
)
from .base_model import BaseModelNotFound, load_pretrained, resolve_base_model
from .combine import combine_adapters
from .lora_export import export_lora
from .merged import export_merged
from .peft_kasa import export_peft_kasa, import_peft_kasa
from .serving import TaggedInput, adapter_active, load_adapters, read_tagged_inputs, run_by_adapter

__all__ = [
    "BaseModelNotFound", "TaggedInput", "adapter_active", "combine_adapters", "export_lora", "export_merged",
    "export_peft_kasa", "format_inspection", "format_truncation_report", "import_peft_kasa", "inspect_adapter",
    "load_adapters", "load_pretrained", "plot_adapter", "plot_spectra", "read_tagged_inputs", "resolve_base_model",
    "run_by_adapter", "truncation_report",
]
