"""Moderating records from files: every response of every record gets one verdict."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from safealign.config import at_least_one
from safealign.data.records import AttributeRecord, DualPreferencePair, PreferencePair, QARecord, Record, dialogue
from safealign.moderation.model import Moderator, Verdict


def responses_of(record: Record) -> list[tuple[str, str]]:
    """(origin, response) of each response a record holds (pairs hold two)."""
    origin = record.origin or "?"
    if isinstance(record, (QARecord, AttributeRecord)):
        return [(origin, record.response)]
    if isinstance(record, DualPreferencePair):
        return [(f"{origin}#response_0", record.response_0), (f"{origin}#response_1", record.response_1)]
    if isinstance(record, PreferencePair):
        return [(f"{origin}#chosen", record.chosen), (f"{origin}#rejected", record.rejected)]
    raise ValueError(f"{origin}: a {record.record_type} record has no response to moderate")


def moderate_records(moderator: Moderator, records: list[Record], batch_size: int = 32) -> Iterator[dict[str, Any]]:
    """One output row per response: where it came from, the texts and the verdict."""
    items = [(r, origin, response) for r in records for origin, response in responses_of(r)]
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        verdicts = moderator.predict([dialogue(r) for r, _, _ in chunk], [resp for _, _, resp in chunk], batch_size)
        for (record, origin, response), verdict in zip(chunk, verdicts):
            yield verdict_row(origin, record, response, verdict)


def verdict_row(origin: str, record: Record, response: str, verdict: Verdict) -> dict[str, Any]:
    """The JSON Lines row of `safealign moderate`."""
    row = {"origin": origin, "prompt": record.prompt, "response": response, **asdict(verdict)}
    row["categories"] = [name for name, on in verdict.categories.items() if on]
    if record.meta and "id" in record.meta:
        row["id"] = record.meta["id"]
    return row


@dataclass(kw_only=True)
class ModerateConfig:
    """`safealign moderate`: one verdict per response of every record."""

    model: str
    """A moderation folder (from `safealign train moderation`)."""
    input: list[str]
    """Records with responses (JSONL of {prompt, response}, QA data, pairs); one entry per flag."""
    output: str
    """JSON Lines: one verdict per response."""
    format: str | None = None
    """Source format (detected when not given)."""
    skip_invalid: bool = False
    """Go on past bad records; they go to `rejects`."""
    rejects: str | None = None
    """Where rejected lines go (default: OUTPUT.rejects.jsonl)."""
    batch_size: int = 32
    """Responses per forward pass."""

    def validate(self) -> None:
        """Check settings once, early."""
        at_least_one(self, "batch_size")


def run_moderate(cfg: ModerateConfig) -> dict[str, Any]:
    """Judge and write; returns the read/kept/rejected counts, the verdicts and the flagged, and where rejects went."""
    import json
    from pathlib import Path

    from safealign.data.load import load, write_rejects

    loaded = load(cfg.input, cfg.format, strict=not cfg.skip_invalid)
    moderator = Moderator.load(cfg.model)
    report = loaded.report
    output = Path(cfg.output)
    rejects = None
    if report.rejected:
        rejects = Path(cfg.rejects) if cfg.rejects else output.with_suffix(".rejects.jsonl")
        write_rejects(report.rejections, rejects)
    output.parent.mkdir(parents=True, exist_ok=True)
    flagged = total = 0
    with open(output, "w", encoding="utf-8") as out:
        for row in moderate_records(moderator, loaded.records, cfg.batch_size):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            total += 1
            flagged += row["flagged"]
    return {"read": report.read, "kept": report.kept, "rejected": report.rejected, "verdicts": total,
            "flagged": flagged, "rejects": str(rejects) if rejects else None, "output": str(output)}
