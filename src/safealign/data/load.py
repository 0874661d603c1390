"""Load canonical records from files, hub datasets and mixtures of them, with full accounting.

A source spec is `PATH_OR_NAME[@REVISION][#SPLIT][%SIDE=SHARE][:PROPORTION]`:
- a local `.jsonl`, `.json`, `.csv` (each optionally `.gz`) or `.parquet` file;
- a local dataset folder or a hub dataset id, read through `datasets.load_dataset`
  (pin `@REVISION` for hub ids: the upstream data has changed under users before);
- `%test=SHARE` keeps the held-out side of a fixed split by prompt (a hash of the dialogue:
  about SHARE of the records), `%train=SHARE` the rest; the two never share a prompt, so a
  pipeline can train on one side of a file and evaluate on the other;
- `:PROPORTION` takes that share of the source's kept records (seeded; above 1 repeats).

Strict by default: the first bad record raises `DataError` naming file, line, field and
reason. With `strict=False` every bad line becomes a `Rejection` (raw text kept) and the
load goes on; `read == kept + rejected` holds for every source and for the whole load (plus
`other_side`, the valid records a `%SIDE=` split leaves out).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from safealign.data.errors import DataError, LoadReport, RecordError, Rejection, printable
from safealign.data.formats import Format, detect_format, get_format
from safealign.data.io import RowSource, iter_rows, local_kind
from safealign.data.records import Record, content_key, to_dict

_PROPORTION = re.compile(r"^(?P<body>.+):(?P<p>\d+(?:\.\d*)?|\.\d+)$")
_SIDE = re.compile(r"^(?P<body>.+)%(?P<side>train|test)=(?P<share>0?\.\d+)$")
HOLDOUT_SALT = "holdout"  # the `%test=` split's own salt: independent of every seeded validation split
_UNPINNED_WARNED: set[str] = set()


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One entry of a mixture."""

    location: str
    proportion: float = 1.0
    revision: str | None = None
    split: str | None = None
    side: str | None = None  # "train" or "test" of the split by prompt with `share` held out
    share: float = 0.0


def parse_spec(spec: str) -> SourceSpec:
    """Parse `PATH_OR_NAME[@REVISION][#SPLIT][%SIDE=SHARE][:PROPORTION]`; an existing path is taken whole."""
    body, proportion = spec, 1.0
    match = _PROPORTION.match(spec)
    if match and not Path(spec).exists():
        body, proportion = match["body"], float(match["p"])
        if proportion <= 0:
            raise DataError(f"{spec}: proportion must be above 0")
    side, share = None, 0.0
    match = _SIDE.match(body)
    if match and not Path(body).exists():
        body, side, share = match["body"], match["side"], float(match["share"])
        if not 0 < share < 1:
            raise DataError(f"{spec}: the held-out share must be between 0 and 1")
    if Path(body).exists():
        return SourceSpec(body, proportion, side=side, share=share)
    body, _, split = body.partition("#")
    location, _, revision = body.partition("@")
    return SourceSpec(location, proportion, revision or None, split or None, side, share)


def row_source(spec: SourceSpec) -> RowSource:
    """Which reader serves `spec`: a local file by its suffix, else the datasets library."""
    path = Path(spec.location)
    if path.is_file():
        kind = local_kind(path)
        return RowSource(spec.location, kind, textual=kind == "csv")
    if path.is_dir():
        return RowSource(spec.location, "hub", split=spec.split)
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet", ".gz") or spec.location.startswith((".", "/")):
        raise DataError(f"{spec.location}: no such file")
    if spec.revision is None and spec.location not in _UNPINNED_WARNED:
        _UNPINNED_WARNED.add(spec.location)
        import warnings

        warnings.warn(
            f"{spec.location}: no revision pinned; pass {spec.location}@REVISION for reproducible data",
            stacklevel=2,
        )
    return RowSource(spec.location, "hub", revision=spec.revision, split=spec.split)


@dataclass
class Loaded:
    """Records of one load with their accounting."""

    records: list[Record]
    report: LoadReport
    per_source: list[tuple[SourceSpec, LoadReport, int]] = field(default_factory=list)  # (spec, report, used)


def read_source(spec: SourceSpec, format_name: str | None = None, strict: bool = True) -> tuple[list[Record], LoadReport]:
    """Every valid record of one source, and what was read, kept and rejected."""
    source = row_source(spec)
    fmt: Format | None = get_format(format_name) if format_name else None
    report = LoadReport()
    records: list[Record] = []
    location, textual = source.location, source.textual
    for line, row, raw, error in iter_rows(source):
        report.read += 1
        if error is None:
            if fmt is None:
                fmt = detect_format(row, location)
                report.formats[location] = fmt.name
            try:
                record = fmt.parse_row(row, textual)
            except RecordError as exc:
                error = exc
        if error is not None:
            rejection = Rejection(location, line, error.field, error.reason, raw)
            if strict:
                raise DataError(rejection.describe() + "\n(use --skip-invalid to write bad records to a rejects file and go on)")
            report.rejections.append(rejection)
            continue
        record.origin = f"{location}:{line}"
        records.append(record)
    if fmt is not None:
        report.formats[location] = fmt.name
    report.kept = len(records)
    return records, report


def load(
    specs: str | Sequence[str],
    format_name: str | None = None,
    strict: bool = True,
    dedupe: bool = False,
    seed: int = 0,
) -> Loaded:
    """Load a mixture of sources; duplicates are counted, and rejected when `dedupe`."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise DataError("no data given")
    total = LoadReport()
    parts: list[tuple[SourceSpec, list[Record], LoadReport]] = []
    seen: dict[tuple, str] = {}
    for text in specs:
        spec = parse_spec(text)
        records, report = read_source(spec, format_name, strict)
        if spec.side is not None:
            train, test = _split_by_prompt(records, spec.share, HOLDOUT_SALT)
            records = test if spec.side == "test" else train
            report.kept = len(records)
            report.other_side = report.read - report.rejected - len(records)
        records = _mark_duplicates(records, report, seen, dedupe)
        parts.append((spec, records, report))
        total.merge(report)
    mixed: list[Record] = []
    per_source = []
    for index, (spec, records, report) in enumerate(parts):
        chosen = take_proportion(records, spec.proportion, seed + index)
        mixed.extend(chosen)
        per_source.append((spec, report, len(chosen)))
    return Loaded(mixed, total, per_source)


def _mark_duplicates(records: list[Record], report: LoadReport, seen: dict[tuple, str], dedupe: bool) -> list[Record]:
    kept: list[Record] = []
    for record in records:
        key = content_key(record)
        first = seen.get(key)
        if first is None:
            seen[key] = record.origin or "?"
            kept.append(record)
            continue
        report.duplicates += 1
        if not dedupe:
            kept.append(record)
            continue
        location, _, line = (record.origin or "?:0").rpartition(":")
        raw = json.dumps(to_dict(record), ensure_ascii=False)
        report.rejections.append(Rejection(location, int(line), "-", f"duplicate of {first}", raw))
    report.kept = len(kept)
    return kept


def take_proportion(records: list[Record], proportion: float, seed: int) -> list[Record]:
    """A seeded share of `records`: whole copies for the integer part, a sample for the rest."""
    if proportion == 1.0:
        return records
    whole, frac = divmod(proportion, 1.0)
    rng = random.Random(seed)
    out = records * int(whole)
    count = round(frac * len(records))
    out.extend(records[i] for i in sorted(rng.sample(range(len(records)), count)))
    return out


def split_train_validation(records: Iterable[Record], validation: float, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Deterministic split by a seeded hash of the dialogue, so one prompt never sits on both sides."""
    if not 0 <= validation < 1:
        raise ValueError(f"validation share must be in [0, 1), got {validation}")
    return _split_by_prompt(records, validation, str(seed))


def _split_by_prompt(records: Iterable[Record], share: float, salt_text: str) -> tuple[list[Record], list[Record]]:
    train: list[Record] = []
    held_out: list[Record] = []
    salt = f"{salt_text}\x00".encode()
    for record in records:
        key = json.dumps([record.system, record.context, record.prompt], ensure_ascii=False).encode()
        value = int.from_bytes(hashlib.blake2b(salt + key, digest_size=8).digest(), "big") / 2**64
        (held_out if value < share else train).append(record)
    return train, held_out


def prompt_key(prompt: str) -> str:
    """A prompt as compared across files: case-folded, whitespace collapsed."""
    return " ".join(prompt.split()).casefold()


def without_prompts(records: list[Record], others: Iterable[Record]) -> tuple[list[Record], int]:
    """`records` without any whose prompt another set has (case and spacing aside), and how many were dropped."""
    taken = {prompt_key(r.prompt) for r in others}
    kept = [r for r in records if prompt_key(r.prompt) not in taken]
    return kept, len(records) - len(kept)


def write_rejects(rejections: Iterable[Rejection], path: str | Path) -> int:
    """Write every rejection as JSON Lines, nothing of the raw line lost; returns how many.

    One row per rejection: `location`, `line`, `field`, `reason`, `raw` (the line as text)
    and, only where the line's bytes are not valid UTF-8, `raw_base64` with those bytes exactly
    (`raw` then shows U+FFFD for each bad byte). Fields are escaped where needed, never dropped.
    """
    n = 0
    with open(path, "w", encoding="utf-8") as out:
        for r in rejections:
            row = {"location": printable(r.location), "line": r.line, "field": printable(r.field),
                   "reason": printable(r.reason), **r.raw_record()}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
