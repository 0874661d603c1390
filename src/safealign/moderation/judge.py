"""Moderating records from files: every response of every record gets one verdict."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

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
