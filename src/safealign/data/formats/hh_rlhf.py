"""Anthropic HH-RLHF: `chosen` / `rejected` transcripts of "\\n\\nHuman:" / "\\n\\nAssistant:" turns.

Each transcript is split at its last "\\n\\nAssistant:" into the dialogue before it and the
final response. The two dialogues must be identical (else the pair compares answers to
different conversations and is rejected). The final Human turn becomes `prompt`, earlier
turns `context`. Docta's label-error suggestions, when present, are kept in `meta`.
"""

from __future__ import annotations

import re
from typing import Any

from safealign.data.errors import RecordError
from safealign.data.formats import fields as f
from safealign.data.records import PreferencePair, Turn

REQUIRED = frozenset({"chosen", "rejected"})
OPTIONAL = frozenset({"suggest_chosen_rejected", "suggest_confidence"})  # Docta's label-error audit
HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse(row: dict[str, Any], textual: bool) -> PreferencePair:
    """One HH-RLHF row as a preference pair with its multi-turn context kept."""
    chosen_dialogue, chosen = split_final_response(f.text(row, "chosen"), "chosen")
    rejected_dialogue, rejected = split_final_response(f.text(row, "rejected"), "rejected")
    if chosen_dialogue != rejected_dialogue:
        raise RecordError("rejected", "the dialogue before the final Assistant turn differs from the chosen one")
    f.check_distinct("rejected", chosen, rejected)
    turns = parse_turns(chosen_dialogue, "chosen")
    if not turns or turns[-1][0] != "user":
        raise RecordError("chosen", "the turn before the final Assistant response is not a Human turn")
    meta = {k: row[k] for k in OPTIONAL if k in row} or None
    return PreferencePair(prompt=turns[-1][1], chosen=chosen, rejected=rejected, context=tuple(turns[:-1]), meta=meta)


def split_final_response(transcript: str, name: str) -> tuple[str, str]:
    """(dialogue before the last Assistant turn, that turn's text)."""
    cut = transcript.rfind(ASSISTANT)
    if cut < 0:
        raise RecordError(name, 'no "\\n\\nAssistant:" turn in the transcript')
    return transcript[:cut], transcript[cut + len(ASSISTANT) :].strip()


def parse_turns(dialogue: str, name: str) -> list[Turn]:
    """[(role, text), ...] of a transcript that starts with a Human turn."""
    parts = _TURN.split(dialogue)
    if parts[0].strip():
        raise RecordError(name, 'the transcript does not start with "\\n\\nHuman:"')
    return [(_ROLES[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
