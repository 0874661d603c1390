"""Damaged copies of the real files through `safealign data validate --skip-invalid`: never a traceback.

A seeded mutator damages each real file once per case, the way files get damaged (flipped
bytes, truncation, a duplicated span, stray quotes, NUL or BOM bytes, invalid UTF-8, a field
of the wrong type, a lone surrogate, a missing or unknown field), in every format the data
layer reads: JSON Lines, JSON array, CSV, gzip, parquet. Every case must exit 0 or 1 with
no traceback, count read = kept + rejected, and leave a rejects file that parses and holds
every rejected line (its exact bytes where they are not UTF-8).
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import re
from pathlib import Path

import pytest
from conftest import DATA, run_cli
from typer.testing import CliRunner

from safealign.cli import app

SOURCES = {
    "jsonl": "pku_saferlhf/v1_test_sample.jsonl",
    "jsonl-helpsteer": "helpsteer/steerlm_regression_8.jsonl",
    "json-array": "pku_saferlhf/v0_pairs_32.json",
    "json-array-prompts": "beavertails/evaluation_700.json",
    "csv": "beavertails/unsafe_qa_140.csv",
    "gzip": "hh_rlhf/harmless-base_test.jsonl.gz",
    "canonical": None,  # the v1 sample written as canonical records (`meta`, `context`), made per module
}
CASES_PER_SOURCE = 50  # 8 sources: 400 cases (and 100 conversions) in about 15 s, in process
COUNTS = re.compile(r"read (\d+) \| kept (\d+) \| rejected (\d+)")
WRONG_VALUES = [17, -1.5, True, None, [], {"a": 1}, {"note": "\udc80"}, "", "not a number", [1, "x"], "[/bold]"]


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One byte-level damage at a random place."""
    kind = rng.choice(["flip", "truncate", "duplicate", "quote", "nul", "bom", "bad-utf8", "encoded-surrogate"])
    at = rng.randrange(len(data))
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 5)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == "truncate":
        return data[:at]
    if kind == "duplicate":
        end = min(len(data), at + rng.randint(1, 400))
        return data[:end] + data[at:end] + data[end:]
    insert = {"quote": b'"', "nul": b"\x00", "bom": b"\xff\xfe", "bad-utf8": b"\xc3\x28\xa0",
              "encoded-surrogate": b"\xed\xa0\x80"}[kind]
    return data[:at] + insert + data[at:]


def _damage_value(row: dict, rng: random.Random) -> dict:
    """One field of a parsed row damaged: a wrong type, a lone surrogate, removed, or unknown."""
    row = dict(row)
    key = rng.choice(sorted(row))
    kind = rng.choice(["wrong-type", "surrogate", "missing", "unknown"])
    if kind == "wrong-type":
        row[key] = rng.choice(WRONG_VALUES)
    elif kind == "surrogate":
        row[key] = "text with a lone \ud800 surrogate" if rng.random() < 0.5 else "\udcff"
    elif kind == "missing":
        del row[key]
    else:
        row["unexpected_field"] = "x"
    return row


def _mutate_jsonl(data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines) - 1)
    row = json.loads(lines[i])
    lines[i] = json.dumps(_damage_value(row, rng)).encode()  # ensure_ascii: a surrogate becomes a \ud800 escape
    return b"\n".join(lines)


def _mutate_json_array(data: bytes, rng: random.Random) -> bytes:
    rows = json.loads(data)
    i = rng.randrange(len(rows))
    rows[i] = _damage_value(rows[i], rng)
    return json.dumps(rows, indent=rng.choice([None, 2])).encode()


def _mutate_csv(data: bytes, rng: random.Random) -> bytes:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    i = rng.randrange(1, len(rows))
    kind = rng.choice(["cell", "short", "long", "surrogate-bytes"])
    if kind == "cell":
        rows[i][rng.randrange(len(rows[i]))] = rng.choice(["", "true", "12", "[1, 2]", '"quoted"'])
    elif kind == "short":
        rows[i] = rows[i][:-1]
    elif kind == "long":
        rows[i] = [*rows[i], "extra"]
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    text = out.getvalue().encode("utf-8")
    if kind == "surrogate-bytes":
        text = text.replace(b"\n", b"\xed\xa0\x80\xff\n", 1 + rng.randrange(3))
    return text


def make_case(name: str, rng: random.Random, folder: Path, canonical: Path | None = None) -> Path:
    """A damaged copy of source `name` in `folder`."""
    source = canonical if name == "canonical" else DATA / SOURCES[name]
    raw = source.read_bytes()
    compressed = raw[:2] == b"\x1f\x8b"
    data = gzip.decompress(raw) if compressed else raw
    if compressed:  # the first 300 of 2,312 lines: the same damage, a tenth of the time
        data = b"\n".join(data.split(b"\n")[:300])
        raw = gzip.compress(data, mtime=0)
    structural = {"jsonl": _mutate_jsonl, "jsonl-helpsteer": _mutate_jsonl, "gzip": _mutate_jsonl, "canonical": _mutate_jsonl,
                  "json-array": _mutate_json_array, "json-array-prompts": _mutate_json_array, "csv": _mutate_csv}[name]
    if compressed and rng.random() < 0.25:
        damaged = _mutate_bytes(raw, rng)  # damage the compressed stream itself
    else:
        data = structural(data, rng) if rng.random() < 0.5 else _mutate_bytes(data, rng)
        damaged = gzip.compress(data, mtime=0) if compressed else data
    target = folder / source.name
    target.write_bytes(damaged)
    return target


def make_parquet_case(rng: random.Random, folder: Path, good: Path) -> Path:
    """A damaged parquet file: bytes flipped or cut, or a column of the wrong type."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = folder / "records.parquet"
    if rng.random() < 0.5:
        target.write_bytes(_mutate_bytes(good.read_bytes(), rng))
        return target
    table = pq.read_table(good)
    column = rng.choice(table.column_names)
    values = [rng.choice([3, 4.5, True])] * table.num_rows
    index = table.column_names.index(column)
    pq.write_table(table.set_column(index, column, pa.array([str(v) for v in values] if rng.random() < 0.5 else values)), target)
    return target


def check_outcome(exit_code: int, output: str, rejects: Path) -> None:
    assert exit_code in (0, 1), output
    assert "Traceback" not in output, output
    counts = COUNTS.search(output)
    if counts is None:  # a whole-file problem: one clear message, nothing partly read
        assert exit_code == 1 and "error:" in output, output
        return
    read, kept, rejected = map(int, counts.groups())
    assert read == kept + rejected, output
    if not rejected:
        assert not rejects.exists()
        return
    rows = [json.loads(line) for line in rejects.read_bytes().decode("utf-8").splitlines()]  # strict UTF-8
    assert len(rows) == rejected, output
    for row in rows:
        assert {"location", "line", "field", "reason", "raw"} <= row.keys()
        if "raw_base64" in row:
            exact = base64.b64decode(row["raw_base64"], validate=True)
            assert exact.decode("utf-8", "replace") == row["raw"]
            with pytest.raises(UnicodeDecodeError):
                exact.decode("utf-8")


def _canonical(folder: Path, suffix: str) -> Path:
    from safealign.data.load import load
    from safealign.data.write import write_records

    records = load(str(DATA / SOURCES["jsonl"])).records
    for i, record in enumerate(records):
        record.meta = {"note": f"row {i}", "reviewers": ["a", "b"]}
    return write_records(records, folder / f"records{suffix}")


@pytest.fixture(scope="module")
def good_parquet(tmp_path_factory) -> Path:
    return _canonical(tmp_path_factory.mktemp("parquet"), ".parquet")


@pytest.fixture(scope="module")
def canonical_jsonl(tmp_path_factory) -> Path:
    return _canonical(tmp_path_factory.mktemp("canonical"), ".jsonl")


@pytest.mark.parametrize("name", [*SOURCES, "parquet"])
def test_damaged_real_files_never_crash_validate_or_convert(name: str, tmp_path: Path, good_parquet: Path,
                                                             canonical_jsonl: Path) -> None:
    runner = CliRunner()
    rng = random.Random(f"fuzz-{name}")
    for case in range(CASES_PER_SOURCE):
        folder = tmp_path / str(case)
        folder.mkdir()
        if name == "parquet":
            path = make_parquet_case(rng, folder, good_parquet)
        else:
            path = make_case(name, rng, folder, canonical_jsonl)
        rejects = folder / "rejects.jsonl"
        result = runner.invoke(app, ["data", "validate", str(path), "--skip-invalid", "--rejects", str(rejects)])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"case {case} of {name} ({path}) raised") from result.exception
        check_outcome(result.exit_code, result.output, rejects)
        if case % 4 == 0:  # what was kept is written back out as canonical records
            out, rejects = folder / "out.jsonl", folder / "convert-rejects.jsonl"
            result = runner.invoke(app, ["data", "convert", str(path), "--skip-invalid", "--rejects", str(rejects), "--to", str(out)])
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                raise AssertionError(f"convert: case {case} of {name} ({path}) raised") from result.exception
            check_outcome(result.exit_code, result.output, rejects)
            counts = COUNTS.search(result.output)
            if counts is not None:
                assert result.exit_code == 0 and len(out.read_text(encoding="utf-8").splitlines()) == int(counts.group(2))


def test_damaged_files_through_the_real_cli(tmp_path: Path) -> None:
    """A few cases in a real process: the console's own encoding and exit path."""
    rng = random.Random("fuzz-subprocess")
    for case, name in enumerate(["csv", "json-array", "jsonl", "gzip"] * 2):
        folder = tmp_path / str(case)
        folder.mkdir()
        path = make_case(name, rng, folder)
        rejects = folder / "rejects.jsonl"
        proc = run_cli("data", "validate", str(path), "--skip-invalid", "--rejects", str(rejects))
        check_outcome(proc.returncode, proc.stdout + proc.stderr, rejects)


def test_invalid_utf8_is_kept_exactly_in_the_rejects_file(tmp_path: Path) -> None:
    rows = (DATA / SOURCES["csv"]).read_bytes().split(b"\n")
    rows[2] = rows[2].replace(b",", b"\xff\xfe,", 1)
    damaged = tmp_path / "unsafe_qa.csv"
    damaged.write_bytes(b"\n".join(rows))
    rejects = tmp_path / "rejects.jsonl"
    proc = run_cli("data", "validate", str(damaged), "--skip-invalid", "--rejects", str(rejects))
    assert proc.returncode == 1 and "read 140 | kept 139 | rejected 1" in proc.stdout, proc.stdout + proc.stderr
    (row,) = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert row["line"] == 3 and row["reason"] == "invalid UTF-8"
    assert b"\xff\xfe" in base64.b64decode(row["raw_base64"]) and "\ufffd\ufffd" in row["raw"]


def test_a_lone_surrogate_in_a_text_field_is_rejected_with_its_field(tmp_path: Path) -> None:
    rows = json.loads((DATA / SOURCES["json-array"]).read_text())
    rows[3]["response_1"] = "half an emoji \ud83d"
    damaged = tmp_path / "pairs.json"
    damaged.write_text(json.dumps(rows))
    proc = run_cli("data", "validate", str(damaged))
    assert proc.returncode == 1 and "field 'response_1': not valid Unicode text: a lone surrogate U+D83D" in proc.stderr, proc.stderr
