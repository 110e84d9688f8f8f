"""File and argument helpers shared by the task loaders (private)."""

from __future__ import annotations

import csv
import io
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


def read_text(path: PathLike, encoding: str = "utf-8-sig") -> str:
    """The text of ``path`` (line ends kept), with an error naming the file when it is not UTF-8."""
    path = require_path(path)
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at byte {err.start}): "
                         "save it as UTF-8") from None


def read_lines(path: PathLike, encoding: str = "utf-8-sig") -> list[str]:
    """The lines of ``path`` as Python's text files split them (``\n``, ``\r\n`` or ``\r``), without line ends."""
    return [line.rstrip("\n") for line in io.StringIO(read_text(path, encoding), newline=None)]


def read_csv(path: PathLike, delimiter: str = ",") -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV/TSV file with a header row (standard quoting); return (columns, rows). Blank lines are
    skipped; a file without any row is an error."""
    path = require_path(path)
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    rows = list(reader)
    columns = list(reader.fieldnames or [])
    for number, row in enumerate(rows, start=1):
        if None in row or None in row.values():
            raise ValueError(f"{path}, record {number}: expected {len(columns)} fields ({', '.join(columns)})")
    require_records(rows, path)
    return columns, rows


def require_records(records: Sequence[Any], path: PathLike) -> None:
    """Raise ``ValueError`` when a data file holds no record (e.g. a header row only)."""
    if not records:
        raise ValueError(f"{path} holds no examples (it is empty or has a header row only): give a file with data")


def read_json_records(path: PathLike) -> list[dict[str, Any]]:
    """Read a ``.json`` file holding a list of objects, or a ``.jsonl`` file with one object a line."""
    path = require_path(path)
    text = read_text(path)
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
    require_records(records, path)
    return records


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: invalid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
