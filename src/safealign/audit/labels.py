"""Which labels of a set of records the audit reads, the text it embeds for each, and how a fix is applied.

One `LabelSet` per label kind (per category for harm categories):

| `--label` | items | classes |
|---|---|---|
| `is_safe` | each QA record; each response of a dual-preference pair | safe, unsafe |
| `categories` | the same items, one set per harm category seen | absent, present |
| `severity` | items labelled unsafe with a severity of 1–3 (0 is implied by safe) | 1, 2, 3 |
| `safer`, `better` | dual-preference pairs (`better` only where the data has an order) | first, second |
| `chosen` | preference pairs (chosen/rejected) | first, second |
| `rating` | records with a `rating` in their meta (HH-RLHF red-team attempts: 0–4) | 0 … 4 |

A response item's text is the rendered dialogue with the response. A pair item's feature is
the difference of its two responses' embeddings; each pair is shown in a seeded random
orientation (its label follows), so the classes are balanced and the k-NN votes of pairs
seen the other way round count flipped (`credibility.nearest_neighbours(oriented=True)`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from safealign.data.records import DualPreferencePair, PreferencePair, PromptRecord, QARecord, Record, dialogue
from safealign.models.template import render

LABELS = ("is_safe", "categories", "severity", "safer", "better", "chosen", "rating")
PAIR_LABELS = frozenset({"safer", "better", "chosen"})


@dataclass
class LabelItem:
    """One label of one record: where it is, what it says, and the text(s) its feature is made from."""

    record: int  # index into the audited records
    field: str  # the record field, e.g. "is_safe", "is_response_1_safe", "safer_response_id", "meta.rating"
    given: Any  # the value as the record has it
    label: int  # the class index the audit works on (for a pair: in the shown orientation)
    texts: tuple[str, ...]  # one text, or (first, second) of a pair as shown
    swapped: bool = False  # a pair shown the other way round: the class of the record's own order is 1 − label
    slot: int | None = None  # which response of a dual-preference pair (response items)


@dataclass
class LabelSet:
    """The items of one label kind (or one harm category), with its class names."""

    name: str  # e.g. "is_safe", "categories:Violence", "safer"
    classes: list[str]
    items: list[LabelItem] = field(default_factory=list)

    @property
    def oriented(self) -> bool:
        """Pair-order labels: features are differences, neighbours may vote flipped."""
        return self.name in PAIR_LABELS

    def value_of(self, item: LabelItem, cls: int) -> Any:
        """The record-field value that class `cls` (in the item's shown orientation) stands for."""
        if self.oriented:
            own = 1 - cls if item.swapped else cls
            return ("chosen", "rejected")[own] if self.name == "chosen" else own
        if self.name == "is_safe":
            return cls == 0
        if self.name.startswith("categories:"):
            return bool(cls)
        if self.name == "severity":
            return cls + 1
        return cls  # rating


def _text(record: Record, response: str) -> str:
    return render(None, [*dialogue(record), {"role": "assistant", "content": response}])


def _responses(records: list[Record]) -> list[tuple[int, int | None, str, bool | None, tuple[str, ...], int | None]]:
    """(record index, slot, text, is_safe, harm categories, severity) of every labelled response."""
    out = []
    for i, record in enumerate(records):
        if isinstance(record, QARecord):
            out.append((i, None, _text(record, record.response), record.is_safe, record.harm_categories, record.severity))
        elif isinstance(record, DualPreferencePair):
            for slot in (0, 1):
                out.append((i, slot, _text(record, record.response(slot)), record.is_safe(slot), record.harm_categories(slot),
                            record.severity(slot)))
    return out


def label_sets(records: list[Record], label: str, seed: int = 0) -> list[LabelSet]:
    """The label sets of `label` found in `records` (empty when none has such a label)."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    if label in PAIR_LABELS:
        return _pair_sets(records, label, seed)
    if label == "rating":
        found = [(i, r) for i, r in enumerate(records) if r.meta and isinstance(r.meta.get("rating"), (int, float))
                 and not isinstance(r, (PromptRecord, DualPreferencePair, PreferencePair))]
        items = [LabelItem(i, "meta.rating", r.meta["rating"], int(round(r.meta["rating"])), (_text(r, r.response),))
                 for i, r in found]
        if not items:
            return []
        return [LabelSet("rating", [str(c) for c in range(max(it.label for it in items) + 1)], items)]
    responses = _responses(records)
    if label == "is_safe":
        items = [LabelItem(i, _field("is_safe", slot), safe, 0 if safe else 1, (text,), slot=slot)
                 for i, slot, text, safe, _, _ in responses if safe is not None]
        return [LabelSet("is_safe", ["safe", "unsafe"], items)] if items else []
    if label == "severity":
        items = [LabelItem(i, _field("severity", slot), level, level - 1, (text,), slot=slot)
                 for i, slot, text, safe, _, level in responses if safe is False and level in (1, 2, 3)]
        return [LabelSet("severity", ["1", "2", "3"], items)] if items else []
    names = sorted({c for *_, categories, _ in responses for c in categories})
    sets = []
    for name in names:  # a category is known for every item with a safety label (safe: absent)
        items = [LabelItem(i, _field("harm_categories", slot), name in categories, int(name in categories), (text,), slot=slot)
                 for i, slot, text, safe, categories, _ in responses if safe is not None]
        sets.append(LabelSet(f"categories:{name}", ["absent", "present"], items))
    return sets


def _field(name: str, slot: int | None) -> str:
    if slot is None:
        return name
    return f"is_response_{slot}_safe" if name == "is_safe" else f"response_{slot}_{name}"


def _pair_sets(records: list[Record], label: str, seed: int) -> list[LabelSet]:
    rng = random.Random(seed)
    items = []
    for i, record in enumerate(records):
        if label == "chosen" and isinstance(record, PreferencePair):
            texts, own, name, given = (_text(record, record.chosen), _text(record, record.rejected)), 0, "chosen", "chosen"
        elif label in ("safer", "better") and isinstance(record, DualPreferencePair):
            own = record.safer_response_id if label == "safer" else record.better_response_id
            if own is None:
                continue
            texts, name, given = (_text(record, record.response_0), _text(record, record.response_1)), f"{label}_response_id", own
        else:
            continue
        swapped = rng.random() < 0.5
        shown = (texts[1], texts[0]) if swapped else texts
        items.append(LabelItem(i, name, given, 1 - own if swapped else own, shown, swapped))
    return [LabelSet(label, ["first", "second"], items)] if items else []


def apply_fix(record: Record, field_name: str, slot: int | None, value: Any) -> tuple[Record, list[str]]:
    """`record` with `field_name` set to `value`, and what else changed to keep its labels consistent.

    A response relabelled safe loses its harm categories and gets severity 0 (when it had a
    severity); relabelled unsafe, a severity of 0 becomes unknown. A category added to a safe
    response makes it unsafe. A pair whose safer response would then be the unsafe one while
    the other is safe gets `safer_response_id` from its safety labels; a corrected pair order
    that would contradict them exchanges the two responses' safety labels. `chosen` set to
    "rejected" swaps the two responses.
    """
    also: list[str] = []
    if field_name == "meta.rating":
        return replace(record, meta={**(record.meta or {}), "rating": value}), also
    if field_name == "chosen":
        if value == "rejected":
            return replace(record, chosen=record.rejected, rejected=record.chosen), also
        return record, also
    if field_name == "better_response_id":
        return replace(record, better_response_id=int(value)), also
    if field_name == "safer_response_id":
        fixed = replace(record, safer_response_id=int(value))
        safer, other = fixed.is_safe(fixed.safer_response_id), fixed.is_safe(1 - fixed.safer_response_id)
        if safer is False and other is True:
            fixed = replace(fixed, is_response_0_safe=record.is_response_1_safe, is_response_1_safe=record.is_response_0_safe,
                            response_0_harm_categories=record.response_1_harm_categories,
                            response_1_harm_categories=record.response_0_harm_categories,
                            response_0_severity=record.response_1_severity, response_1_severity=record.response_0_severity)
            also.append("the two responses' safety labels exchanged")
        return fixed, also
    # a response's labels: is_safe, harm categories (value: (category, present)), severity
    if isinstance(record, DualPreferencePair):
        safe, categories, severity = record.is_safe(slot), record.harm_categories(slot), record.severity(slot)
    else:
        safe, categories, severity = record.is_safe, record.harm_categories, record.severity
    if field_name.endswith("safe"):
        safe = bool(value)
        if safe:
            if categories or (severity or 0) > 0:
                also.append("harm categories and severity cleared")
            categories, severity = (), (0 if severity is not None else None)
        elif severity == 0:
            severity = None
            also.append("severity 0 made unknown")
    elif field_name.endswith("harm_categories"):
        name, present = value
        categories = tuple(sorted(set(categories) | {name})) if present else tuple(c for c in categories if c != name)
        if present and safe:
            safe, severity = False, (None if severity == 0 else severity)
            also.append("labelled unsafe")
    elif field_name.endswith("severity"):
        severity = int(value)
    if isinstance(record, DualPreferencePair):
        fixed = replace(record, **{f"is_response_{slot}_safe": safe, f"response_{slot}_harm_categories": categories,
                                   f"response_{slot}_severity": severity})
        s0, s1 = fixed.is_response_0_safe, fixed.is_response_1_safe
        if s0 is not None and s1 is not None and s0 != s1 and fixed.is_safe(fixed.safer_response_id) is False:
            fixed = replace(fixed, safer_response_id=0 if s0 else 1)
            also.append("safer_response_id set to the safe response")
        return fixed, also
    return replace(record, is_safe=safe, harm_categories=categories, severity=severity), also
