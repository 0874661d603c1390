"""Steering a policy by what it is asked for: SteerLM attribute values and Janus-style system messages, rendered into records.

- `parse_attributes("helpfulness:4,verbosity:1")` → {name: value}, names from
  `STEER_ATTRIBUTES` (the five HelpSteer attributes and harmlessness), values 0–4.
- `conditioned(record, values, style)`: the record with its attribute values in the
  conversation. style "system" (the default, for chat templates): a system line, after any
  system message the record has; style "nemo": NeMo-Aligner's `<extra_id_2>name:value,...`
  line at the end of the user's message, so it is part of the prompt (never of the response
  a policy learns).
- `with_system(record, text)`: the record with a system message (replacing its own).
- Attributes measured without a model: `quantile_levels` (0–4 by the corpus's quintiles:
  verbosity from lengths, helpfulness from reward scores, harmlessness from costs, reversed)
  and `harmlessness_from_safety` (safe → 4, severity 1/2/3 → 2/1/0, unsafe without a
  severity → 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from safealign.data.errors import DataError
from safealign.data.records import ATTRIBUTES, Record

STEER_ATTRIBUTES = (*ATTRIBUTES, "harmlessness")
STYLES = ("system", "nemo")
LEVELS = 5  # values 0..4
NEMO_TAG = "<extra_id_2>"


def parse_attributes(text: str) -> dict[str, int]:
    """`name:value,...` → {name: value}; a DataError names the bad part."""
    values: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, colon, value = part.partition(":")
        name = name.strip()
        if not colon or name not in STEER_ATTRIBUTES:
            raise DataError(f"attributes: {part!r}: expected NAME:VALUE with NAME one of {', '.join(STEER_ATTRIBUTES)}")
        try:
            number = int(value)
        except ValueError:
            raise DataError(f"attributes: {part!r}: the value must be an integer 0–{LEVELS - 1}") from None
        if not 0 <= number < LEVELS:
            raise DataError(f"attributes: {part!r}: the value must be an integer 0–{LEVELS - 1}")
        if name in values:
            raise DataError(f"attributes: {name} given twice")
        values[name] = number
    if not values:
        raise DataError("attributes: empty; expected e.g. helpfulness:4,verbosity:1")
    return values


def attribute_line(values: dict[str, int], style: str = "system") -> str:
    """The attribute values as the policy reads them, in `STEER_ATTRIBUTES` order."""
    ordered = [(name, values[name]) for name in STEER_ATTRIBUTES if name in values]
    if style == "nemo":
        return NEMO_TAG + ",".join(f"{name}:{value}" for name, value in ordered)
    if style == "system":
        return "Answer with these qualities, each on a 0-4 scale: " + ", ".join(f"{name} {value}" for name, value in ordered) + "."
    raise DataError(f"attributes style: must be one of {', '.join(STYLES)}, got {style!r}")


def conditioned(record: Record, values: dict[str, int], style: str = "system") -> Record:
    """A copy of `record` whose conversation asks for `values`."""
    line = attribute_line(values, style)
    if style == "nemo":
        return dataclasses.replace(record, prompt=f"{record.prompt}\n{line}")
    return dataclasses.replace(record, system=f"{record.system}\n{line}" if record.system else line)


def with_system(record: Record, text: str | None) -> Record:
    """A copy of `record` with `text` as its system message (None: unchanged)."""
    return record if text is None else dataclasses.replace(record, system=text)


def quantile_levels(values: Sequence[float], reverse: bool = False) -> tuple[list[int], list[float]]:
    """Levels 0–4 by the quintiles of `values` (ties share a level), and the four cut points.

    reverse: the largest values get level 0 (a cost: more cost, less harmless).
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return [], []
    cuts = [float(c) for c in np.quantile(x, [0.2, 0.4, 0.6, 0.8])]
    levels = np.searchsorted(cuts, x, side="right")  # value v gets the number of cut points ≤ v
    if reverse:
        levels = (LEVELS - 1) - levels
    return [int(v) for v in levels], cuts


def level_of(value: float, cuts: Sequence[float], reverse: bool = False) -> int:
    """The level of one value against cut points from `quantile_levels`."""
    level = int(np.searchsorted(np.asarray(cuts), value, side="right"))
    return (LEVELS - 1) - level if reverse else level


def harmlessness_from_safety(is_safe: bool | None, severity: int | None) -> int | None:
    """PKU-SafeRLHF safety labels on the 0–4 scale: safe 4; severity 1, 2, 3 → 2, 1, 0; unsafe, no severity → 1."""
    if is_safe is None:
        return None
    if is_safe:
        return 4
    return {1: 2, 2: 1, 3: 0}.get(severity, 1) if severity else 1
