"""The registry of source formats: each adapter turns one format into canonical records.

A format names its required and optional fields; rows with a missing or unknown field
are rejected before the adapter runs. `detect_format` picks the first format whose field
set fits the first readable row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safealign.data.errors import DataError, RecordError
from safealign.data.formats import beavertails, canonical, fields, helpsteer, hh_rlhf, pku, plain
from safealign.data.records import Record

Parser = Callable[[dict[str, Any], bool], Record]


@dataclass(frozen=True)
class Format:
    """A source format: its fields, what it produces and how to parse one row."""

    name: str
    description: str
    produces: str  # record_type of the records it yields
    parse: Parser
    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    detect: Callable[[dict[str, Any]], bool] | None = None
    allowed: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", self.required | self.optional)

    def matches(self, row: dict[str, Any]) -> bool:
        """Whether `row` looks like this format."""
        if self.detect is not None:
            return self.detect(row)
        return self.required <= row.keys() <= self.allowed

    def parse_row(self, row: dict[str, Any], textual: bool) -> Record:
        """Check the field set, then parse."""
        if self.detect is None:
            fields.check_fields(row, self.required, self.allowed)
        return self.parse(row, textual)


# Order matters for detection: the first format that fits the first row wins.
FORMATS: dict[str, Format] = {
    fmt.name: fmt
    for fmt in (
        Format("canonical", "safealign canonical records (any record_type), as written by `data convert`", "any",
               canonical.parse, detect=canonical.detect),
        Format("pku-saferlhf-v1", "PKU-SafeRLHF v1: dual preference, 19 harm categories, severity, sha256",
               "dual_preference", pku.parse_v1, pku.V1_FIELDS, pku.V1_OPTIONAL),
        Format("pku-saferlhf-v0", "PKU-SafeRLHF v0: dual preference with safety labels, no categories",
               "dual_preference", pku.parse_v0, pku.V0_FIELDS),
        Format("pku-saferlhf-single-dimension", "PKU-SafeRLHF-single-dimension: one preference trading off both, sha256",
               "preference", pku.parse_single_dimension, pku.SINGLE_DIMENSION_FIELDS),
        Format("pku-saferlhf-realign", "PKU-SafeRLHF realign pairs {prompt, response: [safer, less safe]}: safety only",
               "dual_preference", pku.parse_realign, pku.REALIGN_FIELDS, detect=pku.is_realign),
        Format("pku-saferlhf-qa", "PKU-SafeRLHF-QA: prompt, response, is_safe, 19 harm categories, severity",
               "qa", pku.parse_qa, pku.QA_REQUIRED, pku.QA_OPTIONAL),
        Format("beavertails-qa", "BeaverTails QA: 14-key category dict and is_safe",
               "qa", beavertails.parse_qa, beavertails.QA_FIELDS),
        Format("beavertails-single", "BeaverTails unsafe QA with one category key per row (e.g. CSV)",
               "qa", beavertails.parse_single_category, beavertails.CSV_FIELDS),
        Format("beavertails-eval", "BeaverTails-Evaluation prompts: prompt, category, category_id",
               "prompt", beavertails.parse_evaluation, beavertails.EVAL_FIELDS),
        Format("beavertails-prompt-label", "BeaverTails prompts with a harmful/safe label and the 14-key category dict",
               "prompt", beavertails.parse_prompt_label, beavertails.PROMPT_LABEL_FIELDS, beavertails.PROMPT_LABEL_OPTIONAL),
        Format("hh-rlhf", "Anthropic HH-RLHF chosen/rejected transcripts (Docta suggestions kept)",
               "preference", hh_rlhf.parse, hh_rlhf.REQUIRED, hh_rlhf.OPTIONAL),
        Format("hh-rlhf-red-team", "Anthropic HH-RLHF red-team attempts: transcript and attack-success rating 0–4 (Docta suggestions kept)",
               "qa", hh_rlhf.parse_red_team, hh_rlhf.RED_TEAM_REQUIRED, hh_rlhf.RED_TEAM_OPTIONAL),
        Format("prompt-response", "Unlabelled answers: prompt and response (optional id, system) — e.g. for moderation",
               "qa", plain.parse_prompt_response, plain.REQUIRED, plain.OPTIONAL),
        Format("helpsteer", "HelpSteer / HelpSteer2: prompt, response and five 0–4 attributes",
               "attribute", helpsteer.parse_columns, frozenset({"prompt", "response"}), helpsteer.COLUMNS),
        Format("steerlm", "NeMo-Aligner SteerLM regression: templated text and 9 labels (-100 missing)",
               "attribute", helpsteer.parse_steerlm, helpsteer.STEERLM_FIELDS),
    )
}


def get_format(name: str) -> Format:
    """The format called `name`, or a DataError listing the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise DataError(f"unknown format {name!r}; known: {', '.join(FORMATS)}") from None


def detect_format(row: dict[str, Any], location: str) -> Format:
    """The first registered format that fits `row`, or a DataError that shows the fields found."""
    for fmt in FORMATS.values():
        if fmt.matches(row):
            return fmt
    raise DataError(
        f"{location}: cannot tell the format from the fields {sorted(row)}; "
        f"pass --format (one of: {', '.join(FORMATS)})"
    )


__all__ = ["FORMATS", "Format", "RecordError", "detect_format", "get_format"]
