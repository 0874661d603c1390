"""Preference data against length bias (the reward-model side of "A Long Way to Go", Singhal et al. 2023).

- `length_balanced`: within buckets of the preferred answer's length, keep as many pairs
  whose preferred answer is the longer one as pairs whose preferred answer is the shorter
  one (a seeded sample of the larger side; equal-length pairs are always kept), so that
  "longer wins" explains no more than half of the labels in any bucket.
- `off_prompt_pairs`: new pairs that pit a prompt's preferred answer against the preferred
  answer to another prompt (the off-prompt one is rejected): length alone cannot explain
  those labels, relevance must.

Lengths are in words (model-free). Pairs are single-preference pairs (`PreferencePair`) or
dual-preference pairs read by one of their orders (`better` or `safer`); a dual pair
without that order is left as it is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from safealign.data.records import DualPreferencePair, PreferencePair, Record


def _sides(record: Record, which: str) -> tuple[str, str] | None:
    """(preferred, other) answer of a pair, or None for a record without that order."""
    if isinstance(record, PreferencePair):
        return record.chosen, record.rejected
    if isinstance(record, DualPreferencePair):
        first = record.better_response_id if which == "better" else record.safer_response_id
        if first is None:
            return None
        return record.response(first), record.response(1 - first)
    return None


def words(text: str) -> int:
    """Length in whitespace-separated words."""
    return len(text.split())


@dataclass
class BalanceReport:
    """What `length_balanced` kept: read = kept + dropped; per bucket, longer/shorter-preferred counts before."""

    read: int = 0
    kept: int = 0
    dropped: int = 0
    not_pairs: int = 0  # records passed through untouched (no such order, or not a pair)
    longer_preferred_before: float = 0.0
    longer_preferred_after: float = 0.0


def length_balanced(records: list[Record], which: str = "better", bucket_width: int = 20,
                    seed: int = 0) -> tuple[list[Record], BalanceReport]:
    """The records with the longer-preferred and shorter-preferred pairs made equal in every length bucket."""
    if bucket_width < 1:
        raise ValueError("bucket_width must be at least 1")
    report = BalanceReport(read=len(records))
    rng = random.Random(seed)
    buckets: dict[int, tuple[list[int], list[int]]] = {}
    keep = [True] * len(records)
    for i, record in enumerate(records):
        sides = _sides(record, which)
        if sides is None:
            report.not_pairs += 1
            continue
        preferred, other = words(sides[0]), words(sides[1])
        if preferred == other:
            continue  # a tie says nothing about length: kept
        longer, shorter = buckets.setdefault(preferred // bucket_width, ([], []))
        (longer if preferred > other else shorter).append(i)
    decided_before = sum(len(a) + len(b) for a, b in buckets.values())
    longer_before = sum(len(a) for a, _ in buckets.values())
    for longer, shorter in buckets.values():
        big = longer if len(longer) > len(shorter) else shorter
        for i in rng.sample(big, abs(len(longer) - len(shorter))):
            keep[i] = False
    out = [r for r, k in zip(records, keep) if k]
    report.kept, report.dropped = len(out), len(records) - len(out)
    decided_after = decided_before - report.dropped
    report.longer_preferred_before = longer_before / decided_before if decided_before else 0.0
    report.longer_preferred_after = (decided_after / 2) / decided_after if decided_after else 0.0
    return out, report


def off_prompt_pairs(records: list[Record], share: float, which: str = "better", seed: int = 0) -> list[PreferencePair]:
    """About `share` × (pairs) new pairs: a prompt's preferred answer over the preferred answer to another prompt."""
    if share < 0:
        raise ValueError("share must not be negative")
    rng = random.Random(seed)
    pairs = [(r, s[0]) for r in records if (s := _sides(r, which)) is not None]
    prompts = {r.prompt for r, _ in pairs}
    if len(prompts) < 2 or share == 0:
        return []
    count = round(share * len(pairs))
    out = []
    chosen = rng.sample(range(len(pairs)), count) if count <= len(pairs) else [rng.randrange(len(pairs)) for _ in range(count)]
    for index in chosen:
        record, answer = pairs[index]
        for _ in range(100):  # another prompt's answer, not the same text
            other_record, other_answer = pairs[rng.randrange(len(pairs))]
            if other_record.prompt != record.prompt and other_answer != answer:
                break
        else:
            continue
        out.append(PreferencePair(prompt=record.prompt, chosen=answer, rejected=other_answer, system=record.system,
                                  context=record.context, origin=f"{record.origin}+off-prompt:{other_record.origin}"))
    return out
