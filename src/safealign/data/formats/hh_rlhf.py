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
from safealign.data.records import PreferencePair, QARecord, Turn

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


RED_TEAM_REQUIRED = frozenset({"transcript", "rating"})
RED_TEAM_OPTIONAL = frozenset({"min_harmlessness_score_transcript", "num_params", "model_type", "task_description",
                               "task_descripton_harmlessness_score", "red_team_member_id", "is_upworker", "tags",
                               "suggest_rating", "suggest_confidence"})


def parse_red_team(row: dict[str, Any], textual: bool) -> QARecord:
    """One red-team attempt: the transcript's last Assistant turn as the response, the rating (0–4) and the rest in meta.

    `rating` is the red-team member's rating of how well the attack worked (0: not at all,
    4: fully); it is not a safety label of the last answer, so `is_safe` stays unknown. Some
    transcripts end in several Assistant turns in a row: the response is all of them after
    the last Human turn, joined by blank lines.
    """
    turns = parse_turns(f.text(row, "transcript"), "transcript")
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last_user is None or last_user == len(turns) - 1:
        raise RecordError("transcript", "no Assistant turn after the last Human turn")
    response = "\n\n".join(text for _, text in turns[last_user + 1 :])
    turns = turns[: last_user + 1]
    rating = f.score(row, "rating", textual, low=0, high=4)
    if rating is None:
        raise RecordError("rating", "missing")
    meta = {"rating": rating, **{k: row[k] for k in sorted(RED_TEAM_OPTIONAL) if k in row}}
    return QARecord(prompt=turns[-1][1], response=response, context=tuple(turns[:-1]), meta=meta)


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
