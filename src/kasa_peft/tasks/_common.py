"""File and argument helpers shared by the task loaders (private)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
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
    skipped; a file without any row, a repeated column name, a record with another number of fields than the
    header and a quote that is never closed are errors naming the record and its line."""
    path = require_path(path)
    records = csv_records(read_text(path), path, delimiter=delimiter, strict=True)
    header, body = (records[0][1], records[1:]) if records else ([], [])
    require_unique_columns(header, path)
    rows = []
    for number, (line, fields) in enumerate(body, start=1):
        if len(fields) != len(header):
            spans = f"; its field {fields[-1][:20]!r}... runs over several lines: is a '\"' at line {line} " \
                    "never closed?" if "\n" in fields[-1] else ""
            raise ValueError(f"{path}, record {number}: expected {len(header)} fields ({', '.join(header)}), found "
                             f"{len(fields)} (line {line}){spans}")
        rows.append(dict(zip(header, fields, strict=True)))
    require_records(rows, path)
    return header, rows


def csv_records(text: str, path: PathLike, **options: Any) -> list[tuple[int, list[str]]]:
    """The non-blank records of CSV/TSV ``text`` (read from ``path``), each with the line it starts on.

    A cell may be as long as the file (the csv module's default limit is 128 KiB; the same text in JSONL has
    none). Malformed quoting is an error naming the line of the record it starts in.
    """
    reader = csv.reader(io.StringIO(text, newline=""), **options)
    records, line = [], 1
    limit = csv.field_size_limit(max(len(text), csv.field_size_limit()))
    try:
        for fields in reader:
            if fields:
                records.append((line, fields))
            line = reader.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path}, line {line}: {err} in the record that starts there: check its quotes (a quote "
                         "opened and never closed, or text after a closing quote; a '\"' inside a quoted field is "
                         "written '\"\"')") from None
    finally:
        csv.field_size_limit(limit)
    return records


def require_unique_columns(columns: Sequence[str], path: PathLike) -> None:
    """Raise ``ValueError`` when a column name appears twice (only one of the columns would be read)."""
    repeated = sorted(name for name, count in Counter(columns).items() if count > 1)
    if repeated:
        raise ValueError(f"{path}: column {', '.join(map(repr, repeated))} appears more than once in the header; "
                         "give each column its own name")


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


def require_text_fields(record: dict[str, Any], fields: Iterable[str], where: str,
                        optional: Iterable[str] = ()) -> None:
    """Raise ``ValueError`` naming the record when one of ``fields`` (or of ``optional``, where present and not
    null) is not a string: a number or a list there would reach the tokenizer, far from its file."""
    for field in (*fields, *(name for name in optional if record.get(name) is not None)):
        if not isinstance(record[field], str):
            raise ValueError(f"{where}: field {field!r} is {_json_kind(record[field])} {str(record[field])[:40]!r}, "
                             "expected text (a JSON string)")


def _json_kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_object_with_unique_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: invalid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except _RepeatedKey as error:
        raise ValueError(f"{where}: field {error.args[0]!r} appears more than once in one object (only the last "
                         "would be read); keep one") from None


class _RepeatedKey(Exception):
    """A JSON object names one field twice."""


def _object_with_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        raise _RepeatedKey(next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1))
    return record
