"""File and argument helpers shared by the task loaders (private)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PathLike = str | Path


def check_choice(value: str, choices: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the valid options when ``value`` is not one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; expected one of: {', '.join(options)}")


def require_path(path: PathLike, hint: str = "") -> Path:
    """Return ``path`` as a ``Path``, or raise ``FileNotFoundError`` naming it (plus ``hint``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found" + (f": {hint}" if hint else ""))
    return path


def data_path(data_dir: PathLike, relative: str) -> Path:
    """Locate ``relative`` (e.g. ``glue/CoLA/dev.tsv``) inside the benchmark data directory."""
    return require_path(Path(data_dir) / relative, f"pass --data-dir pointing at a directory that contains {relative}")


def require_columns(available: Sequence[str], wanted: Iterable[str], source: PathLike) -> None:
    """Raise ``ValueError`` listing the available columns when a wanted one is missing."""
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ValueError(
            f"{source}: no column {', '.join(map(repr, missing))}; "
            f"available columns: {', '.join(map(repr, available))}"
        )


def read_csv(path: PathLike, delimiter: str = ",") -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV/TSV file with a header row (standard quoting); return (columns, rows)."""
    path = require_path(path)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    for number, row in enumerate(rows, start=1):
        if None in row or None in row.values():
            raise ValueError(f"{path}, record {number}: expected {len(columns)} fields ({', '.join(columns)})")
    return columns, rows


def read_json_records(path: PathLike) -> list[dict[str, Any]]:
    """Read a ``.json`` file holding a list of objects, or a ``.jsonl`` file with one object a line."""
    path = require_path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        lines = [(no, line) for no, line in enumerate(text.splitlines(), start=1) if line.strip()]
        records = [_parse_json(line, f"{path}, line {no}") for no, line in lines]
    else:
        records = _parse_json(text, str(path))
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of records, found {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {index} is a {type(record).__name__}, expected a JSON object")
    return records


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: invalid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
