"""Validate + convert throughput of the data layer on real PKU-SafeRLHF v1 records.

Scales the bundled v1 sample to N pairs (default 100,000) by giving every copy a distinct
prompt and re-computing its sha256 fields, so every record is unique and fully checked
(field set, types, 19-key harm-category dicts, severity, label consistency, sha256). Then
times `load` (read + validate into canonical records) and `write_records` (JSONL), and
prints records/s against the target of 20,000 records/s.

    .venv/bin/python bench/data_throughput.py [--pairs 100000] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

from safealign.assets import sample_path
from safealign.data.load import load
from safealign.data.write import write_records

TARGET = 20_000


def build_input(pairs: int, out: Path) -> None:
    rows = [json.loads(line) for line in sample_path("pku_saferlhf/v1_test_sample.jsonl").read_text().splitlines()]
    with open(out, "w", encoding="utf-8") as f:
        for i in range(pairs):
            row = dict(rows[i % len(rows)])
            row["prompt"] = f"{row['prompt']} (variant {i})"
            for r in (0, 1):
                row[f"response_{r}_sha256"] = hashlib.sha256((row["prompt"] + row[f"response_{r}"]).encode()).hexdigest()
            f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pku_v1_scaled.jsonl"
        build_input(args.pairs, src)
        size_mb = src.stat().st_size / 2**20
        t0 = time.perf_counter()
        loaded = load(str(src))
        t1 = time.perf_counter()
        write_records(loaded.records, Path(tmp) / "canonical.jsonl")
        t2 = time.perf_counter()
    n = loaded.report.kept
    assert n == args.pairs and loaded.report.rejected == 0
    rate = n / (t2 - t0)
    print(f"input: {n} PKU-SafeRLHF v1 pairs, {size_mb:.0f} MiB JSONL")
    print(f"validate: {t1 - t0:.2f} s ({n / (t1 - t0):,.0f} records/s)")
    print(f"convert (write canonical JSONL): {t2 - t1:.2f} s")
    print(f"validate+convert: {rate:,.0f} records/s; target {TARGET:,} records/s; ratio {rate / TARGET:.2f}x")


if __name__ == "__main__":
    main()
