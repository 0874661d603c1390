"""Preference data against length bias (the reward-model side of "A Long Way to Go", Singhal et al. 2023).

- `length_balanced`: within buckets of the preferred answer's length, keep as many pairs
  whose preferred answer is the longer one as pairs whose preferred answer is the shorter
  one (a seeded sample of the larger side; equal-length pairs are always kept), so that
  "longer wins" explains no more than half of the labels in any bucket.
- `off_prompt_pairs`: new pairs that pit a prompt's preferred answer against the preferred
  answer to another prompt (the off-prompt one is rejected): length alone cannot explain
  those labels, relevance must.
- `confidence_truncated`: drop the share of pairs a first-pass reward model is least (or
  most) confident about, by its margin score(preferred) − score(other) (Singhal et al.'s
  confidence-based truncation, after dataset cartography).

Lengths are in words (model-free). Pairs are single-preference pairs (`PreferencePair`) or
dual-preference pairs read by one of their orders (`better` or `safer`); a dual pair
without that order is left as it is.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from safealign.data.records import DualPreferencePair, PreferencePair, Record


def preference_sides(record: Record, which: str) -> tuple[str, str] | None:
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
        sides = preference_sides(record, which)
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
    pairs = [(r, s[0]) for r in records if (s := preference_sides(r, which)) is not None]
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


TRUNCATE = ("least", "most", "both")


@dataclass
class TruncationReport:
    """What `confidence_truncated` kept: read = kept + dropped (kept counts the `not_scored` records, always kept)."""

    read: int = 0
    kept: int = 0
    dropped: int = 0
    not_scored: int = 0  # records without a margin (no such order): always kept
    mean_margin_before: float = 0.0
    mean_margin_after: float = 0.0
    longer_preferred_before: float = 0.0
    longer_preferred_after: float = 0.0


def confidence_truncated(records: list[Record], margins: Sequence[float | None], share: float, drop: str = "least",
                         which: str = "better") -> tuple[list[Record], TruncationReport]:
    """The records without the `share` of scored pairs with the lowest (least), highest (most) or both-ends margins.

    `margins[i]` is the first-pass model's score(preferred) − score(other) for `records[i]`
    (for a cost model, cost(other) − cost(preferred)), or None where it has none; ties in the
    margin break by position, so the result is deterministic. "both" drops half the share
    from each end.
    """
    if len(margins) != len(records):
        raise ValueError(f"{len(margins)} margins for {len(records)} records")
    if not 0 <= share < 1:
        raise ValueError("share must be in [0, 1)")
    if drop not in TRUNCATE:
        raise ValueError(f"drop must be one of {', '.join(TRUNCATE)}, got {drop!r}")
    scored = [i for i, m in enumerate(margins) if m is not None]
    order = sorted(scored, key=lambda i: (margins[i], i))  # least confident first
    count = round(share * len(scored))
    if drop == "least":
        gone = set(order[:count])
    elif drop == "most":
        gone = set(order[len(order) - count:]) if count else set()
    else:
        low = count // 2
        high = count - low
        gone = set(order[:low]) | (set(order[len(order) - high:]) if high else set())
    out = [r for i, r in enumerate(records) if i not in gone]
    kept_scored = [i for i in scored if i not in gone]

    def mean(index: list[int]) -> float:
        return sum(margins[i] for i in index) / len(index) if index else 0.0

    def longer_share(index: list[int]) -> float:
        decided = [(words(s[0]), words(s[1])) for i in index if (s := preference_sides(records[i], which)) is not None]
        decided = [(a, b) for a, b in decided if a != b]
        return sum(a > b for a, b in decided) / len(decided) if decided else 0.0

    report = TruncationReport(read=len(records), kept=len(out), dropped=len(gone), not_scored=len(records) - len(scored),
                              mean_margin_before=mean(scored), mean_margin_after=mean(kept_scored),
                              longer_preferred_before=longer_share(scored), longer_preferred_after=longer_share(kept_scored))
    return out, report
