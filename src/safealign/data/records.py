"""Canonical records: the only data shapes the rest of safealign speaks (DESIGN §1).

Every source format is turned into one of these by an adapter in `safealign.data.formats`.
Multi-turn dialogue is kept: `context` holds the turns *before* the final user message, so
that a conversation reads `system`, `context...`, user: `prompt`, assistant: response.

Conventions (DESIGN §2): `better_response_id` / `safer_response_id` are 0 or 1; severity
is 0 safe, 1 minor, 2 moderate, 3 severe, or None where the source has no severity;
`harm_categories` are names from the taxonomy named by `taxonomy`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Union

Role = Literal["user", "assistant"]
Turn = tuple[str, str]  # (role, content)

ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


@dataclass(slots=True)
class QARecord:
    """One response to one prompt with its safety meta-labels."""

    record_type: ClassVar[str] = "qa"

    prompt: str
    response: str
    is_safe: bool | None = None
    harm_categories: tuple[str, ...] = ()
    severity: int | None = None
    taxonomy: str | None = None
    system: str | None = None
    context: tuple[Turn, ...] = ()
    source: str | None = None  # who wrote the response, when the data says
    origin: str | None = None  # file:line (or hub row) the record was read from
    meta: dict[str, Any] | None = None


@dataclass(slots=True)
class DualPreferencePair:
    """Two responses with a helpfulness preference and a separate harmlessness preference."""

    record_type: ClassVar[str] = "dual_preference"

    prompt: str
    response_0: str
    response_1: str
    better_response_id: int | None  # None: the data has no helpfulness order (e.g. the realign pairs)
    safer_response_id: int
    is_response_0_safe: bool | None = None
    is_response_1_safe: bool | None = None
    response_0_harm_categories: tuple[str, ...] = ()
    response_1_harm_categories: tuple[str, ...] = ()
    response_0_severity: int | None = None
    response_1_severity: int | None = None
    taxonomy: str | None = None
    prompt_source: str | None = None
    response_0_source: str | None = None
    response_1_source: str | None = None
    system: str | None = None
    context: tuple[Turn, ...] = ()
    origin: str | None = None
    meta: dict[str, Any] | None = None

    def response(self, i: int) -> str:
        """Response `i` (0 or 1)."""
        return self.response_1 if i else self.response_0

    def is_safe(self, i: int) -> bool | None:
        """Safety label of response `i`."""
        return self.is_response_1_safe if i else self.is_response_0_safe

    def harm_categories(self, i: int) -> tuple[str, ...]:
        """Harm categories of response `i`."""
        return self.response_1_harm_categories if i else self.response_0_harm_categories

    def severity(self, i: int) -> int | None:
        """Severity of response `i`."""
        return self.response_1_severity if i else self.response_0_severity

    def response_source(self, i: int) -> str | None:
        """Who wrote response `i`, when the data says."""
        return self.response_1_source if i else self.response_0_source


@dataclass(slots=True)
class PreferencePair:
    """A single preference: `chosen` is preferred over `rejected`."""

    record_type: ClassVar[str] = "preference"

    prompt: str
    chosen: str
    rejected: str
    system: str | None = None
    context: tuple[Turn, ...] = ()
    source: str | None = None
    origin: str | None = None
    meta: dict[str, Any] | None = None


@dataclass(slots=True)
class AttributeRecord:
    """A response with HelpSteer attribute scores (0–4 each; None where missing)."""

    record_type: ClassVar[str] = "attribute"

    prompt: str
    response: str
    helpfulness: float | None = None
    correctness: float | None = None
    coherence: float | None = None
    complexity: float | None = None
    verbosity: float | None = None
    harmlessness: float | None = None  # a steering attribute (SteerLM), 0–4; not one of the attribute model's five
    system: str | None = None
    context: tuple[Turn, ...] = ()
    source: str | None = None
    origin: str | None = None
    meta: dict[str, Any] | None = None

    def attributes(self) -> tuple[float | None, ...]:
        """The five scores in `ATTRIBUTES` order."""
        return (self.helpfulness, self.correctness, self.coherence, self.complexity, self.verbosity)


@dataclass(slots=True)
class PromptRecord:
    """A prompt for evaluation, optionally with the harm category it probes, or a safety label of its own."""

    record_type: ClassVar[str] = "prompt"

    prompt: str
    category: str | None = None
    taxonomy: str | None = None
    is_safe: bool | None = None  # a label of the prompt itself (prompt moderation), when the data has one
    harm_categories: tuple[str, ...] = ()
    system: str | None = None
    context: tuple[Turn, ...] = ()
    source: str | None = None
    origin: str | None = None
    meta: dict[str, Any] | None = None


Record = Union[QARecord, DualPreferencePair, PreferencePair, AttributeRecord, PromptRecord]
RECORD_TYPES: dict[str, type] = {
    cls.record_type: cls
    for cls in (QARecord, DualPreferencePair, PreferencePair, AttributeRecord, PromptRecord)
}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in RECORD_TYPES.values()
}


def field_names(cls: type) -> tuple[str, ...]:
    """The serialised field names of a record class, in declaration order."""
    return _FIELD_NAMES[cls]


def to_dict(record: Record) -> dict[str, Any]:
    """A JSON- and Parquet-friendly dict of `record`, tagged with its `record_type`."""
    out: dict[str, Any] = {"record_type": record.record_type}
    for name in _FIELD_NAMES[type(record)]:
        value = getattr(record, name)
        if name == "context":
            value = [{"role": role, "content": content} for role, content in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def dialogue(record: Record) -> list[dict[str, str]]:
    """The conversation up to and including the final user message, in chat-template form."""
    turns: list[dict[str, str]] = []
    if record.system:
        turns.append({"role": "system", "content": record.system})
    turns.extend({"role": role, "content": content} for role, content in record.context)
    turns.append({"role": "user", "content": record.prompt})
    return turns


def content_key(record: Record) -> tuple:
    """What makes two records the same content (labels excluded), for de-duplication."""
    base = (record.record_type, record.system, record.context, record.prompt)
    if isinstance(record, DualPreferencePair):
        return base + (record.response_0, record.response_1)
    if isinstance(record, PreferencePair):
        return base + (record.chosen, record.rejected)
    if isinstance(record, PromptRecord):
        return base
    return base + (record.response,)

