"""The interop commands as plain functions, for ``kasa-peft export / import / inspect / generate / predict``."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..core.model import check_adapter_name
from ..analysis import format_inspection, inspect_adapter, plot_adapter
from .peft_kasa import import_peft_kasa

# format -> (module, function), imported on use: the llama.cpp formats need the optional gguf package
EXPORTERS = {"lora": ("lora_export", "export_lora"), "peft-kasa": ("peft_kasa", "export_peft_kasa"),
             "merged": ("merged", "export_merged"), "gguf": ("gguf", "export_gguf_adapter"),
             "merged-gguf": ("gguf", "export_merged_gguf")}


def export_command(adapter_dir: str | os.PathLike, fmt: str, out: str | os.PathLike,
                   base: str | os.PathLike | None = None, label_names: Sequence[str] | None = None,
                   gguf_type: str | None = None) -> Path:
    """``kasa-peft export ADAPTER_DIR --format {lora,peft-kasa,merged,gguf,merged-gguf} --out OUT [--base PATH]
    [--gguf-type {f32,f16,q8_0,source}]``.

    ``label_names`` (a classifier's classes) go into a merged model's ``id2label`` / ``label2id`` and into the
    model card of a PEFT-format export.
    """
    if fmt not in EXPORTERS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {sorted(EXPORTERS)}")
    if gguf_type is not None and fmt != "merged-gguf":
        raise ValueError(f"--gguf-type applies to --format merged-gguf only, not {fmt}")
    options: dict[str, Any] = {"tensor_type": gguf_type} if gguf_type is not None else {}
    if fmt in ("merged", "lora", "peft-kasa"):
        options["label_names"] = label_names
    module, function = EXPORTERS[fmt]
    exporter = getattr(importlib.import_module(f".{module}", __package__), function)
    return exporter(adapter_dir, out, base_model=base, **options)


def import_command(peft_dir: str | os.PathLike, out: str | os.PathLike, base: str | os.PathLike | None = None,
                   adapter_name: str = "default") -> Path:
    """``kasa-peft import PEFT_DIR --out OUT [--base PATH]``: a PEFT KaSA adapter into our format."""
    return import_peft_kasa(peft_dir, base, out, adapter_name)


def inspect_command(adapter_dir: str | os.PathLike, plot: str | os.PathLike | None = None) -> str:
    """``kasa-peft inspect ADAPTER_DIR [--plot FILE.png]``: the text to print (the plot is written first)."""
    text = format_inspection(inspect_adapter(adapter_dir))
    if plot is not None:
        text += f"\n\nplot of what training changed written to {plot_adapter(adapter_dir, plot)}"
    return text


def parse_adapter_specs(specs: Iterable[str]) -> dict[str, str]:
    """``["name=DIR", ...]`` (repeated ``--adapter``) as ``{name: DIR}``; a bare ``DIR`` is named ``default``."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name, path) if sep else ("default", spec)
        if not name or not path:
            raise ValueError(f"--adapter {spec!r}: expected NAME=DIR")
        try:
            check_adapter_name(name)
        except ValueError as err:
            raise ValueError(f"--adapter {spec!r}: {err}") from None
        if name in adapters:
            raise ValueError(f"--adapter name {name!r} is used twice ({adapters[name]} and {path}); "
                             "give each adapter its own name")
        adapters[name] = path
    return adapters
