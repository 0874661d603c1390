"""Write canonical records as JSON Lines (optionally gzip) or Parquet."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path

import orjson

from safealign.data.errors import DataError
from safealign.data.records import Record, to_dict


def write_records(records: Sequence[Record], path: str | Path) -> Path:
    """Write `records` to `path` (.jsonl, .jsonl.gz or .parquet); returns the path."""
    path = Path(path)
    name = path.name.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        _write_parquet(records, path)
    elif name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        dumps = orjson.dumps
        with opener(path, "wb") as out:
            out.writelines(dumps(to_dict(r)) + b"\n" for r in records)
    else:
        raise DataError(f"{path}: output must end in .jsonl, .jsonl.gz or .parquet")
    return path


def _write_parquet(records: Sequence[Record], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = sorted({r.record_type for r in records})
    if len(kinds) > 1:
        raise DataError(f"{path}: a Parquet file holds one record type, got {', '.join(kinds)}; write .jsonl instead")
    rows = [to_dict(r) for r in records]
    for row in rows:
        # meta is free-form: JSON text keeps Parquet's schema fixed
        row["meta"] = None if row["meta"] is None else json.dumps(row["meta"], ensure_ascii=False)
    pq.write_table(pa.Table.from_pylist(rows), path)
