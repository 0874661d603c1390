"""HelpSteer / HelpSteer2 columns and NeMo-Aligner's SteerLM regression format."""

from __future__ import annotations

from typing import Any

from safealign.data.errors import RecordError
from safealign.data.formats import fields as f
from safealign.data.records import ATTRIBUTES, AttributeRecord, Turn

COLUMNS = frozenset({"prompt", "response", *ATTRIBUTES})
STEERLM_FIELDS = frozenset({"text", "label"})
# SteerLM regression labels: 4 OpenAssistant attributes, then the 5 HelpSteer ones; -100 = missing.
STEERLM_LABELS = ("quality", "toxicity", "humor", "creativity", *ATTRIBUTES)
MISSING = -100
_SYSTEM = "<extra_id_0>System\n"
_TURN = "\n<extra_id_1>"
_END = "\n<extra_id_2>"
_ROLES = {"User": "user", "Assistant": "assistant"}


def parse_columns(row: dict[str, Any], textual: bool) -> AttributeRecord:
    """A HelpSteer(2) row: prompt, response and five 0–4 scores (missing allowed)."""
    scores = {name: f.score(row, name, textual) for name in ATTRIBUTES}
    return AttributeRecord(prompt=f.text(row, "prompt"), response=f.text(row, "response", allow_empty=True), **scores)


def parse_steerlm(row: dict[str, Any], textual: bool) -> AttributeRecord:
    """A SteerLM regression row: a templated conversation and 9 labels (-100 = missing)."""
    system, turns = parse_steerlm_text(f.text(row, "text"))
    if len(turns) < 2 or turns[-1][0] != "assistant" or turns[-2][0] != "user":
        raise RecordError("text", "the conversation must end with a User turn followed by an Assistant turn")
    labels = row["label"]
    if type(labels) is not list or len(labels) != len(STEERLM_LABELS):
        raise RecordError("label", f"expected a list of {len(STEERLM_LABELS)} numbers ({', '.join(STEERLM_LABELS)})")
    scores: dict[str, float | None] = {}
    for name, value in zip(STEERLM_LABELS, labels):
        if type(value) not in (int, float):
            raise RecordError("label", f"{name}: expected a number, got {value!r}")
        if value != MISSING and not 0 <= value <= 4:
            raise RecordError("label", f"{name}: must be 0–4 or {MISSING} (missing), got {value:g}")
        if name in ATTRIBUTES:
            scores[name] = None if value == MISSING else float(value)
    return AttributeRecord(
        prompt=turns[-2][1], response=turns[-1][1], system=system, context=tuple(turns[:-2]), **scores
    )


def parse_steerlm_text(text: str) -> tuple[str | None, list[Turn]]:
    """Split `<extra_id_0>System\\n...<extra_id_1>User\\n...<extra_id_1>Assistant\\n...<extra_id_2>`."""
    if not text.startswith(_SYSTEM):
        raise RecordError("text", "does not start with '<extra_id_0>System'")
    body = text[len(_SYSTEM) :]
    end = body.rfind(_END)
    if end >= 0:
        body = body[:end]
    system, *chunks = body.split(_TURN)
    turns: list[Turn] = []
    for chunk in chunks:
        role, _, content = chunk.partition("\n")
        if role not in _ROLES:
            raise RecordError("text", f"unknown turn role {role!r} (expected User or Assistant)")
        turns.append((_ROLES[role], content))
    return (system or None), turns
