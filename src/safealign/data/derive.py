"""Derived records: a dual-preference pair gives two QA records, or one single preference."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from safealign.data.records import DualPreferencePair, PreferencePair, QARecord, Record

PreferenceBasis = Literal["helpfulness", "harmlessness", "both"]
DERIVATIONS = ("qa", "helpfulness", "harmlessness", "both")


def pair_to_qa(pair: DualPreferencePair) -> tuple[QARecord, QARecord]:
    """The two responses of a pair, each with its own safety meta-labels."""
    return tuple(  # type: ignore[return-value]
        QARecord(
            prompt=pair.prompt,
            response=pair.response(i),
            is_safe=pair.is_safe(i),
            harm_categories=pair.harm_categories(i),
            severity=pair.severity(i),
            taxonomy=pair.taxonomy,
            system=pair.system,
            context=pair.context,
            source=pair.response_source(i),
            origin=f"{pair.origin}#response_{i}" if pair.origin else None,
        )
        for i in (0, 1)
    )


def pair_to_preference(pair: DualPreferencePair, basis: PreferenceBasis) -> PreferencePair | None:
    """Chosen = the better (helpfulness), the safer (harmlessness), or both when they agree.

    Returns None for `both` when the better and the safer response differ, and for
    `helpfulness` and `both` when the pair has no helpfulness order (`better_response_id` None).
    """
    if basis in ("helpfulness", "both") and pair.better_response_id is None:
        return None
    if basis == "helpfulness":
        chosen = pair.better_response_id
    elif basis == "harmlessness":
        chosen = pair.safer_response_id
    elif basis == "both":
        if pair.better_response_id != pair.safer_response_id:
            return None
        chosen = pair.better_response_id
    else:
        raise ValueError(f"unknown preference basis {basis!r}; use helpfulness, harmlessness or both")
    return PreferencePair(
        prompt=pair.prompt,
        chosen=pair.response(chosen),
        rejected=pair.response(1 - chosen),
        system=pair.system,
        context=pair.context,
        source=basis,
        origin=pair.origin,
    )


def derive(records: Iterable[Record], to: str) -> tuple[list[Record], int]:
    """Apply a derivation (`qa`, `helpfulness`, `harmlessness`, `both`) to the dual-preference pairs.

    Returns the derived records and how many pairs gave none (`both` where the two
    preferences disagree; `helpfulness` and `both` for pairs with no helpfulness order). Records that are not dual-preference pairs raise ValueError.
    """
    if to not in DERIVATIONS:
        raise ValueError(f"unknown derivation {to!r}; use one of {', '.join(DERIVATIONS)}")
    out: list[Record] = []
    skipped = 0
    for record in records:
        if not isinstance(record, DualPreferencePair):
            raise ValueError(f"{record.origin}: only dual-preference pairs can be derived, got {record.record_type}")
        if to == "qa":
            out.extend(pair_to_qa(record))
            continue
        single = pair_to_preference(record, to)  # type: ignore[arg-type]
        if single is None:
            skipped += 1
        else:
            out.append(single)
    return out, skipped
