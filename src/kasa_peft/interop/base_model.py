"""The base model an adapter was made for, and the adapted model an export reads from."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from contextlib import contextmanager
from pathlib import Path

import transformers
from torch import nn

from ..core import kasa_state, load_adapter, read_adapter
from ..core.model import temporary_adapter
from ..models import ModelLoadError, head_size, load_base, load_tokenizer, loadable_name
from ..tasks.hub import hub_reachable


class BaseModelNotFound(FileNotFoundError):
    """The base model an adapter needs cannot be loaded here."""


def load_pretrained(name_or_path: str) -> nn.Module:
    """A Hugging Face model (local directory or hub id) as the class its config's ``architectures`` names.

    That class includes the task head (e.g. ``BertForSequenceClassification``), which an adapter's
    ``modules_to_save`` may replace; without ``architectures`` the bare ``AutoModel`` is used.
    """
    offline: dict[str, Any] = ({"local_files_only": True} if not Path(name_or_path).exists() and not hub_reachable()
                               else {})
    config = transformers.AutoConfig.from_pretrained(name_or_path, **offline)
    architectures = getattr(config, "architectures", None) or []
    model_class = next((getattr(transformers, a) for a in architectures if hasattr(transformers, a)),
                       transformers.AutoModel)
    return model_class.from_pretrained(name_or_path, config=config, **offline).eval()


def resolve_base_model(base_model: nn.Module | str | os.PathLike | None, recorded: str,
                       num_labels: int | None = None) -> nn.Module:
    """``base_model`` itself, or loaded from its spec (a path, hub id or shortcut such as ``minilm``), or (when
    None) from the ``recorded`` one. With ``num_labels`` it is loaded as a sequence classifier with a head of
    that size (the adapter trained one); otherwise as the class its config names (``load_pretrained``)."""
    if isinstance(base_model, nn.Module):
        return base_model
    name = str(base_model) if base_model is not None else recorded
    if not name:
        raise BaseModelNotFound("the adapter does not record its base model (it was saved from a model without "
                                "config.name_or_path): pass --base PATH (base_model=...) with the model it was "
                                "made for")
    try:
        if num_labels is not None:
            return load_base(name, "sequence_classification", num_labels)
        return load_pretrained(loadable_name(name))
    except (OSError, ValueError, ModelLoadError) as err:
        origin = "recorded in the adapter " if base_model is None else ""
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BaseModelNotFound(f"the base model {name!r} {origin}is not available here ({reason}); "
                                "pass --base PATH (base_model=...) with a local copy of it") from None


def export_base_name(adapter, base_model: nn.Module | str | os.PathLike | None) -> str | None:
    """The base an export names (``base_model_name_or_path``): ``base_model`` when given as a spec, else the one
    the adapter (a ``SavedAdapter``) records; a shortcut as the directory it stands for. ``None`` when unknown."""
    name = str(base_model) if isinstance(base_model, (str, os.PathLike)) else adapter.metadata.get("base_model", "")
    try:
        return loadable_name(name) or None
    except ModelLoadError:  # a shortcut whose package is not installed here: keep its name
        return name


def base_tokenizer(model: nn.Module):
    """The tokenizer of the model's ``config.name_or_path``, if it has one that loads here (else ``None``)."""
    name = getattr(getattr(model, "config", None), "name_or_path", "") or ""
    try:
        return load_tokenizer(name) if name else None
    except ModelLoadError:
        return None


@contextmanager
def adapted_model(source: str | os.PathLike | nn.Module, base_model: nn.Module | str | os.PathLike | None = None,
                  adapter_name: str | None = None) -> Iterator[tuple[nn.Module, str]]:
    """The model and adapter name an export reads from.

    ``source`` is either a model carrying KaSA adapters (``adapter_name``, default the active one, is used)
    or a saved adapter directory, loaded for the block onto ``base_model`` (see ``resolve_base_model``).
    """
    if isinstance(source, nn.Module):
        state = kasa_state(source)
        name = adapter_name or state.active
        if name not in state.configs:
            raise ValueError(f"no adapter named {name!r} to export; this model has {sorted(state.configs)}")
        yield source, name
        return
    metadata, tensors = read_adapter(source)
    model = resolve_base_model(base_model, metadata.get("base_model", ""), head_size(tensors))
    with temporary_adapter(model, lambda m, n: load_adapter(m, source, n)) as name:
        yield model, name
