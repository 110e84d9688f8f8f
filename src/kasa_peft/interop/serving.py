"""Several adapters on one base: loading them, reading tagged inputs, running each input with its adapter.

Input lines (a file or stdin) are one of:

* ``{"adapter": "sst2", "text": "..."}``: a JSON object; ``"adapter": null`` means the base model, no
  ``"adapter"`` key means the default adapter; the other fields are passed on (``text``, ``prompt``,
  ``text_pair``, ...);
* ``sst2<TAB>text``: tagged with an adapter name (an empty tag means the base model);
* ``text``: untagged, for the default adapter.

A tag naming no loaded adapter is an error (it is never taken as part of the text).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from ..core import disable_adapters, kasa_state, load_adapter, read_adapter, set_adapter
from ..core.model import adapter_names_on, unchanged_on_error

T = TypeVar("T")


@dataclass(frozen=True)
class TaggedInput:
    """One input row and the adapter to run it with (``None``: the base model)."""

    adapter: str | None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The row's ``prompt`` or ``text`` field."""
        for key in ("prompt", "text"):
            if isinstance(self.fields.get(key), str):
                return self.fields[key]
        raise ValueError(f"input row {self.fields} has no 'prompt' or 'text' string field")


def load_adapters(model: nn.Module, adapters: Mapping[str, str | os.PathLike]) -> nn.Module:
    """Load several saved adapters onto ``model`` (``{name: directory}``); the last one becomes active.

    All or nothing: a name already on the model, an unreadable directory or an adapter made for another
    base raises, and the model is left exactly as it was (`unchanged_on_error`: the adapters this call had loaded
    are removed, and so are the wrappers they put around its layers).
    """
    taken = sorted(set(adapters) & adapter_names_on(model))
    if taken:
        raise ValueError(f"adapter names {taken} are already used on this model; pick other names")
    for path in adapters.values():
        read_adapter(path)
    with unchanged_on_error(model):
        for name, path in adapters.items():
            load_adapter(model, path, name)
    return model


def parse_tagged_line(line: str, adapters: Collection[str], default: str | None) -> TaggedInput:
    """One input line (see the module doc) as a ``TaggedInput``; raises for an unknown adapter tag."""
    line = line.rstrip("\r\n")
    if line.lstrip().startswith("{"):
        row = json.loads(line)
        adapter = row.pop("adapter", default)
        fields = row
    elif "\t" in line:
        tag, text = line.split("\t", 1)
        adapter, fields = (tag or None), {"text": text}
    else:
        adapter, fields = default, {"text": line}
    if adapter is not None and adapter not in adapters:
        raise ValueError(f"adapter {adapter!r} is not loaded; loaded adapters: {sorted(adapters)} "
                         "(tag the base model with an empty tag or \"adapter\": null)")
    return TaggedInput(adapter, fields)


def read_tagged_inputs(lines: Iterable[str], adapters: Collection[str],
                       default: str | None = None) -> list[TaggedInput]:
    """All non-blank lines as ``TaggedInput``s; errors name the line number."""
    inputs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            inputs.append(parse_tagged_line(line, adapters, default))
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"input line {number}: {err}") from None
    return inputs


@contextmanager
def adapter_active(model: nn.Module, adapter_name: str | None) -> Iterator[nn.Module]:
    """Within the block the model runs ``adapter_name`` (``None``: the base model).

    Afterwards the previously active adapter is active again (if none was, ``adapter_name`` stays active).
    """
    if adapter_name is None:
        with disable_adapters(model):
            yield model
        return
    previous = kasa_state(model).active
    set_adapter(model, adapter_name)
    try:
        yield model
    finally:
        if previous is not None:
            set_adapter(model, previous)


def run_by_adapter(model: nn.Module, inputs: Sequence[TaggedInput],
                   run: Callable[[list[TaggedInput]], Sequence[T]]) -> list[T]:
    """``run`` each adapter's inputs with that adapter active; the results come back in input order.

    ``run`` gets one adapter's inputs at a time (e.g. a function that tokenises, batches and generates),
    so any decoding (beam search included) works unchanged.
    """
    groups: dict[str | None, list[int]] = {}
    for index, item in enumerate(inputs):
        groups.setdefault(item.adapter, []).append(index)
    results: list[Any] = [None] * len(inputs)
    for adapter, indices in groups.items():
        with adapter_active(model, adapter):
            outputs = run([inputs[i] for i in indices])
        if len(outputs) != len(indices):
            raise ValueError(f"run returned {len(outputs)} results for {len(indices)} inputs of adapter {adapter!r}")
        for index, output in zip(indices, outputs, strict=True):
            results[index] = output
    return results
