"""Raw rows from files and hub datasets, with the line each came from.

Readers never raise on a bad line: they yield it with a `RecordError`, so that the loader
decides (strict: stop; `--skip-invalid`: write it to the rejects file and go on). Problems
with a whole file (missing, empty, unknown extension) raise `DataError`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from safealign.data.errors import DataError, RecordError

# (line, row or None, raw text, error or None); raw stays bytes for JSON Lines so the
# happy path never decodes twice (the loader decodes it only for a rejection).
RawRow = tuple[int, "dict[str, Any] | None", "str | bytes", "RecordError | None"]

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_SURROGATE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of invalid UTF-8


@dataclass(frozen=True, slots=True)
class RowSource:
    """Where rows come from; `textual` is true when every value arrives as a string (CSV)."""

    location: str
    kind: str  # jsonl | json | csv | parquet | hub
    textual: bool = False
    revision: str | None = None
    split: str | None = None


def local_kind(path: Path) -> str:
    """The reader for a local file, from its name (`.gz` allowed after the real suffix)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in LOCAL_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise DataError(
        f"{path}: unknown file type; expected one of "
        f"{', '.join(s + '[.gz]' for s in LOCAL_SUFFIXES if s != '.parquet')}, .parquet"
    )


def iter_rows(source: RowSource) -> Iterator[RawRow]:
    """Yield every row of `source` with its line (or row) number."""
    if source.kind == "hub":
        yield from _hub_rows(source)
        return
    path = Path(source.location)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if source.kind == "parquet":
        yield from _parquet_rows(path)
        return
    data = _read_bytes(path)
    if not data.strip():
        if isinstance(data, _Truncated):
            raise DataError(f"{path}: truncated gzip: the compressed stream ends before any record")
        raise DataError(f"{path}: file is empty (no records)")
    if source.kind == "csv":
        yield from _csv_rows(data)
    elif source.kind == "json" and data.lstrip()[:1] == b"[":
        yield from _json_array_rows(data)
    else:  # .jsonl, and .json files that are really JSON Lines
        yield from _jsonl_rows(data)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip (by magic number, not by name).

    A truncated gzip returns what could be decompressed as `_Truncated`, and the readers
    add one rejected row that says where the data stops.
    """
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    decomp = zlib.decompressobj(wbits=31)
    try:
        out = decomp.decompress(raw)
    except zlib.error as exc:
        raise DataError(f"{path}: corrupt gzip data ({exc})") from None
    if not decomp.eof:
        # Keep the complete lines before the cut; the partial last line is reported.
        return _Truncated(out)
    return out


class _Truncated(bytes):
    """Bytes of a gzip stream that ended early (the readers report the cut)."""


def _truncation_error(data: bytes, lines_before: int) -> RawRow:
    tail = data[data.rfind(b"\n") + 1 :].decode("utf-8", "replace")
    return (
        lines_before + 1,
        None,
        tail,
        RecordError(
            "-",
            f"truncated gzip: the compressed stream ends early; nothing after line "
            f"{lines_before} could be read",
        ),
    )


def _jsonl_rows(data: bytes) -> Iterator[RawRow]:
    truncated = isinstance(data, _Truncated)
    lines = data.split(b"\n")
    if truncated:
        lines.pop()  # the partial line is reported below, not parsed
    elif not lines[-1]:
        lines.pop()
    loads = orjson.loads  # several times faster than json.loads; also rejects invalid UTF-8
    n = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except orjson.JSONDecodeError as exc:
            yield n, None, line.decode("utf-8", "replace"), _line_error(line, exc)
            continue
        if type(row) is not dict:
            yield n, None, line.decode("utf-8"), RecordError("-", f"expected a JSON object, got {_json_type(row)}")
            continue
        yield n, row, line, None
    if truncated:
        yield _truncation_error(data, n)


def _json_array_rows(data: bytes) -> Iterator[RawRow]:
    text = data.decode("utf-8", "surrogateescape")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = 1 + text.count("\n", 0, pos)
    ws = re.compile(r"[\s,]*")
    while True:
        start = ws.match(text, pos).end()
        line += text.count("\n", pos, start)
        if start >= len(text) or text[start] == "]":
            break
        try:
            row, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as exc:
            bad_line = text[: exc.pos].count("\n") + 1
            reason = f"invalid JSON ({exc.msg}, column {exc.colno}); the rest of the array cannot be read"
            yield bad_line, None, text[start : start + 2000], RecordError("-", reason)
            return
        raw = text[start:end]
        if _SURROGATE.search(raw):
            yield line, None, raw, RecordError("-", "invalid UTF-8 in this element")
        elif type(row) is not dict:
            yield line, None, raw, RecordError("-", f"expected a JSON object, got {_json_type(row)}")
        else:
            yield line, row, raw, None
        line += raw.count("\n")
        pos = end
    if isinstance(data, _Truncated):
        yield _truncation_error(data, line)


def _csv_rows(data: bytes) -> Iterator[RawRow]:
    text = data.decode("utf-8-sig", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as exc:
        raise DataError(f"unreadable CSV header ({exc})") from None
    width = len(header)
    while True:
        first_line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield first_line, None, "", RecordError("-", f"invalid CSV ({exc})")
            continue
        if not values:
            continue
        raw = json.dumps(values, ensure_ascii=False)
        if _SURROGATE.search("".join(values)):
            yield first_line, None, raw, RecordError("-", "invalid UTF-8")
        elif len(values) != width:
            yield first_line, None, raw, RecordError("-", f"{len(values)} columns, the header has {width}")
        else:
            yield first_line, dict(zip(header, values)), raw, None
    if isinstance(data, _Truncated):
        yield _truncation_error(data, reader.line_num)


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    n = 0
    for group in range(table.num_row_groups):
        try:
            rows = table.read_row_group(group).to_pylist()
        except Exception as exc:  # a damaged page: each of the group's rows is rejected, none is lost from the counts
            reason = f"row group {group} cannot be decoded ({type(exc).__name__}: {exc})"
            for _ in range(table.metadata.row_group(group).num_rows):
                n += 1
                yield n, None, "", RecordError("-", reason)
            continue
        for row in rows:
            n += 1
            yield n, row, _raw_json(row), None
    if n == 0:
        raise DataError(f"{path}: file is empty (no records)")


def _hub_rows(source: RowSource) -> Iterator[RawRow]:
    """Rows of `datasets.load_dataset(name, revision=..., split=...)`: a hub id or a local dataset folder."""
    import datasets

    try:
        loaded = datasets.load_dataset(source.location, revision=source.revision, split=source.split)
    except Exception as exc:  # the datasets library raises many types; the user needs the message
        raise DataError(f"{source.location}: could not load the dataset ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if len(splits) != 1:
            raise DataError(
                f"{source.location}: has splits {', '.join(splits)}; pick one with {source.location}#SPLIT"
            )
        loaded = loaded[splits[0]]
    if len(loaded) == 0:
        raise DataError(f"{source.location}: dataset is empty (no records)")
    for n, row in enumerate(loaded, 1):
        yield n, row, _raw_json(row), None


def _raw_json(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=str)


def _line_error(line: bytes, exc: orjson.JSONDecodeError) -> RecordError:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return RecordError("-", f"invalid UTF-8 (byte {bad.start + 1} of the line)")
    return RecordError("-", f"invalid JSON ({exc.msg}, column {exc.colno})")


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )
