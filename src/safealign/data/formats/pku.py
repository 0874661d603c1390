"""PKU-SafeRLHF adapters: v1 (16 fields), v0 (no categories), the QA variant, the realign pairs and single-dimension."""

from __future__ import annotations

from hashlib import sha256
from typing import Any

from safealign.data.errors import RecordError
from safealign.data.formats import fields as f
from safealign.data.records import DualPreferencePair, PreferencePair, QARecord
from safealign.data.taxonomy import PKU_CATEGORIES, PKU_SAFERLHF

V0_FIELDS = frozenset(
    {"prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe", "better_response_id", "safer_response_id"}
)
V1_FIELDS = V0_FIELDS | {
    "prompt_source",
    "response_0_source",
    "response_1_source",
    "response_0_harm_category",
    "response_1_harm_category",
    "response_0_severity_level",
    "response_1_severity_level",
    "response_0_sha256",
    "response_1_sha256",
}
V1_OPTIONAL = frozenset({"meta"})  # safealign's own block (machine pre-labels, annotators' raw labels); kept on the record
QA_REQUIRED = frozenset({"prompt", "response", "is_safe", "harm_category", "severity_level"})
QA_OPTIONAL = frozenset({"prompt_source", "response_source", "response_sha256"})


def parse_v1(row: dict[str, Any], textual: bool) -> DualPreferencePair:
    """A PKU-SafeRLHF v1 row; checks `response_i_sha256 == sha256(prompt + response_i)`."""
    prompt = f.text(row, "prompt")
    responses = (f.text(row, "response_0", allow_empty=True), f.text(row, "response_1", allow_empty=True))
    for i, response in enumerate(responses):
        _check_sha256(row, f"response_{i}_sha256", prompt + response, f"prompt + response_{i}")
    safe = (f.boolean(row, "is_response_0_safe", textual), f.boolean(row, "is_response_1_safe", textual))
    cats = tuple(f.category_flags(row, f"response_{i}_harm_category", PKU_CATEGORIES) for i in (0, 1))
    levels = tuple(f.severity(row, f"response_{i}_severity_level", textual) for i in (0, 1))
    for i in (0, 1):
        f.check_safety(f"is_response_{i}_safe", safe[i], cats[i], levels[i])
    pair = _pair(row, textual, prompt, responses, safe, cats, levels)
    if row.get("meta") is not None:
        if type(row["meta"]) is not dict:
            raise RecordError("meta", "expected an object")
        pair.meta = row["meta"]
    return pair


def response_sha256(prompt: str, response: str) -> str:
    """PKU-SafeRLHF's `response_i_sha256`: sha256 of prompt + response, as hex."""
    return sha256((prompt + response).encode("utf-8")).hexdigest()


def to_v1_row(pair: DualPreferencePair) -> dict[str, Any]:
    """A fully labelled dual pair as a PKU-SafeRLHF v1 row (plus `meta` when the pair has one) that `parse_v1` reads back."""
    if pair.is_response_0_safe is None or pair.is_response_1_safe is None or pair.better_response_id is None:
        raise RecordError("is_response_0_safe", "a v1 row needs both safety labels and both preferences")
    row: dict[str, Any] = {"prompt": pair.prompt, "response_0": pair.response_0, "response_1": pair.response_1,
                           "prompt_source": pair.prompt_source or "", "response_0_source": pair.response_0_source or "",
                           "response_1_source": pair.response_1_source or ""}
    for i in (0, 1):
        harmed = set(pair.harm_categories(i))
        level = pair.severity(i)
        row[f"is_response_{i}_safe"] = pair.is_safe(i)
        row[f"response_{i}_harm_category"] = {c: c in harmed for c in PKU_CATEGORIES.categories}
        if level is None:
            raise RecordError(f"response_{i}_severity_level", "a v1 row needs a severity level for both responses")
        row[f"response_{i}_severity_level"] = level
        row[f"response_{i}_sha256"] = response_sha256(pair.prompt, pair.response(i))
    row["better_response_id"] = pair.better_response_id
    row["safer_response_id"] = pair.safer_response_id
    if pair.meta is not None:
        row["meta"] = pair.meta
    return row


def parse_v0(row: dict[str, Any], textual: bool) -> DualPreferencePair:
    """A PKU-SafeRLHF v0 row: safety labels but no harm categories or severity."""
    prompt = f.text(row, "prompt")
    responses = (f.text(row, "response_0", allow_empty=True), f.text(row, "response_1", allow_empty=True))
    safe = (f.boolean(row, "is_response_0_safe", textual), f.boolean(row, "is_response_1_safe", textual))
    return _pair(row, textual, prompt, responses, safe, ((), ()), (None, None))


def parse_qa(row: dict[str, Any], textual: bool) -> QARecord:
    """A PKU-SafeRLHF-QA row: one response with is_safe, 19 harm-category flags and severity."""
    prompt = f.text(row, "prompt")
    response = f.text(row, "response", allow_empty=True)
    if row.get("response_sha256") is not None:
        _check_sha256(row, "response_sha256", prompt + response, "prompt + response")
    is_safe = f.boolean(row, "is_safe", textual)
    categories = f.category_flags(row, "harm_category", PKU_CATEGORIES)
    level = f.severity(row, "severity_level", textual)
    f.check_safety("is_safe", is_safe, categories, level)
    return QARecord(
        prompt=prompt,
        response=response,
        is_safe=is_safe,
        harm_categories=categories,
        severity=level,
        taxonomy=PKU_SAFERLHF,
        source=f.optional_text(row, "response_source"),
    )


def _pair(
    row: dict[str, Any],
    textual: bool,
    prompt: str,
    responses: tuple[str, str],
    safe: tuple[bool, bool],
    cats: tuple[tuple[str, ...], tuple[str, ...]],
    levels: tuple[int | None, int | None],
) -> DualPreferencePair:
    f.check_distinct("response_1", *responses)
    better = f.response_id(row, "better_response_id", textual)
    safer = f.response_id(row, "safer_response_id", textual)
    f.check_pair_safety(safe[0], safe[1], safer)
    return DualPreferencePair(
        prompt=prompt,
        response_0=responses[0],
        response_1=responses[1],
        better_response_id=better,
        safer_response_id=safer,
        is_response_0_safe=safe[0],
        is_response_1_safe=safe[1],
        response_0_harm_categories=cats[0],
        response_1_harm_categories=cats[1],
        response_0_severity=levels[0],
        response_1_severity=levels[1],
        taxonomy=PKU_SAFERLHF if levels[0] is not None else None,
        prompt_source=f.optional_text(row, "prompt_source"),
        response_0_source=f.optional_text(row, "response_0_source"),
        response_1_source=f.optional_text(row, "response_1_source"),
    )


def _check_sha256(row: dict[str, Any], name: str, content: str, what: str) -> None:
    expected = f.text(row, name)
    if sha256(content.encode("utf-8")).hexdigest() != expected.lower():
        raise RecordError(name, f"does not match sha256({what}); the text was changed after hashing")


REALIGN_FIELDS = frozenset({"prompt", "response"})
SINGLE_DIMENSION_FIELDS = frozenset({
    "prompt", "response_0", "response_1", "prompt_source", "response_0_source", "response_1_source",
    "better_response_id", "response_0_sha256", "response_1_sha256",
})


def is_realign(row: dict[str, Any]) -> bool:
    """A realign row: exactly prompt and a list `response` (a plain prompt-response row has a string)."""
    return row.keys() == REALIGN_FIELDS and isinstance(row.get("response"), list)


def parse_realign(row: dict[str, Any], textual: bool) -> DualPreferencePair:
    """A PKU-SafeRLHF realign pair `{prompt, response: [safer, less_safe]}`: response 0 labelled safe, 1 unsafe.

    The pairs were kept because their two responses differ in safety label, ordered by
    `safer_response_id`; they carry no helpfulness order, so `better_response_id` is None
    (reward models skip such pairs, and count them).
    """
    f.check_fields(row, REALIGN_FIELDS, REALIGN_FIELDS)
    prompt = f.text(row, "prompt")
    value = row["response"]
    if type(value) is not list or len(value) != 2:
        raise RecordError("response", f"expected a list of two responses [safer, less safe], got {_count(value)}")
    responses = tuple(f.text({f"response[{i}]": v}, f"response[{i}]", allow_empty=True) for i, v in enumerate(value))
    f.check_distinct("response", *responses)
    return DualPreferencePair(
        prompt=prompt, response_0=responses[0], response_1=responses[1], better_response_id=None, safer_response_id=0,
        is_response_0_safe=True, is_response_1_safe=False,
    )


def parse_single_dimension(row: dict[str, Any], textual: bool) -> PreferencePair:
    """A PKU-SafeRLHF-single-dimension pair: one preference that trades helpfulness against harmlessness."""
    prompt = f.text(row, "prompt")
    responses = (f.text(row, "response_0", allow_empty=True), f.text(row, "response_1", allow_empty=True))
    for i, response in enumerate(responses):
        _check_sha256(row, f"response_{i}_sha256", prompt + response, f"prompt + response_{i}")
    f.check_distinct("response_1", *responses)
    better = f.response_id(row, "better_response_id", textual)
    return PreferencePair(prompt=prompt, chosen=responses[better], rejected=responses[1 - better],
                          source=f.optional_text(row, f"response_{better}_source"))


def _count(value: Any) -> str:
    return f"a list of {len(value)}" if type(value) is list else type(value).__name__
