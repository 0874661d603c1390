"""safealign's own canonical records (what `safealign data convert` writes), read back strictly."""

from __future__ import annotations

import json
from typing import Any

from safealign.data.errors import RecordError
from safealign.data.formats import fields as f
from safealign.data.records import (
    ATTRIBUTES,
    RECORD_TYPES,
    DualPreferencePair,
    PromptRecord,
    QARecord,
    Record,
    Turn,
    field_names,
)
from safealign.data.taxonomy import TAXONOMIES

_REQUIRED = {
    "qa": ("prompt", "response"),
    "dual_preference": ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id"),  # better: null for none
    "preference": ("prompt", "chosen", "rejected"),
    "attribute": ("prompt", "response"),
    "prompt": ("prompt",),
}
_RESPONSES = {"response", "response_0", "response_1", "chosen", "rejected"}
_BOOLS = {"is_safe", "is_response_0_safe", "is_response_1_safe"}
_IDS = {"better_response_id", "safer_response_id"}
_LEVELS = {"severity", "response_0_severity", "response_1_severity"}
_CATEGORY_LISTS = {"harm_categories", "response_0_harm_categories", "response_1_harm_categories"}


def detect(row: dict[str, Any]) -> bool:
    """A canonical row says what it is in `record_type`."""
    return "record_type" in row


def parse(row: dict[str, Any], textual: bool) -> Record:
    """A canonical row of any record type, every field checked."""
    if "record_type" not in row:
        raise RecordError("record_type", "missing field")
    kind = row["record_type"]
    cls = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RecordError("record_type", f"unknown record type {kind!r}; known: {', '.join(RECORD_TYPES)}")
    names = field_names(cls)
    f.check_fields(row, frozenset(("record_type", *_REQUIRED[kind])), frozenset(("record_type", *names)))
    taxonomy = f.optional_text(row, "taxonomy") if "taxonomy" in names else None
    if taxonomy is not None and taxonomy not in TAXONOMIES:
        raise RecordError("taxonomy", f"unknown taxonomy {taxonomy!r}; known: {', '.join(TAXONOMIES)}")
    values = {name: _value(row, name, textual, taxonomy) for name in names if name in row}
    record = cls(**values)
    _check_labels(record)
    return record


def _value(row: dict[str, Any], name: str, textual: bool, taxonomy: str | None) -> Any:
    if name == "prompt":
        return f.text(row, name)
    if name in _RESPONSES:
        return f.text(row, name, allow_empty=True)
    if name in _BOOLS:
        return f.optional_boolean(row, name, textual)
    if name == "better_response_id":  # null: no helpfulness order
        return None if row[name] is None else f.response_id(row, name, textual)
    if name in _IDS:
        return f.response_id(row, name, textual)
    if name in _LEVELS:
        return f.optional_severity(row, name, textual)
    if name in ATTRIBUTES or name == "harmlessness":
        return f.score(row, name, textual)
    if name in _CATEGORY_LISTS:
        return _categories(row, name, taxonomy)
    if name == "context":
        return _context(row[name])
    if name == "meta":
        return _meta(row[name])
    return f.optional_text(row, name)


def _categories(row: dict[str, Any], name: str, taxonomy: str | None) -> tuple[str, ...]:
    value = row[name]
    if value is None:
        return ()
    if type(value) is not list or not all(type(c) is str for c in value):
        raise RecordError(name, "expected a list of category names")
    if value and taxonomy is None:
        raise RecordError(name, "harm categories need a 'taxonomy' to name them")
    known = TAXONOMIES[taxonomy] if taxonomy else None
    for category in value:
        if known is not None and category not in known:
            raise RecordError(name, f"unknown {taxonomy} category {category!r}")
    return tuple(value)


def _context(value: Any) -> tuple[Turn, ...]:
    if value is None:
        return ()
    if type(value) is not list:
        raise RecordError("context", "expected a list of {role, content} turns")
    turns: list[Turn] = []
    for i, turn in enumerate(value):
        if type(turn) is not dict or turn.get("role") not in ("user", "assistant") or type(turn.get("content")) is not str:
            raise RecordError("context", f"turn {i}: expected {{'role': 'user'|'assistant', 'content': str}}")
        turns.append((turn["role"], f.valid_unicode(f"context[{i}].content", turn["content"])))
    return tuple(turns)


def _meta(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):  # Parquet files store meta as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise RecordError("meta", "not valid JSON") from None
    if value is not None and type(value) is not dict:
        raise RecordError("meta", "expected an object or null")
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError("meta", "not valid Unicode text: holds a lone surrogate") from None
    except (TypeError, ValueError) as exc:
        raise RecordError("meta", f"not JSON-serialisable ({exc})") from None
    return value


def _check_labels(record: Record) -> None:
    if isinstance(record, QARecord):
        f.check_safety("is_safe", record.is_safe, record.harm_categories, record.severity)
    elif isinstance(record, PromptRecord):
        f.check_safety("is_safe", record.is_safe, record.harm_categories, None)
    elif isinstance(record, DualPreferencePair):
        f.check_distinct("response_1", record.response_0, record.response_1)
        for i in (0, 1):
            f.check_safety(f"is_response_{i}_safe", record.is_safe(i), record.harm_categories(i), record.severity(i))
        f.check_pair_safety(record.is_response_0_safe, record.is_response_1_safe, record.safer_response_id)
