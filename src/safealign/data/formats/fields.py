"""Field validators shared by the adapters: each returns the clean value or raises RecordError.

`textual` is true for sources where every value is a string (CSV): then "true"/"0"/"2.5"
are read as the types they spell. JSON sources must carry the real types.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import compress
from typing import Any

from safealign.data.errors import SURROGATE, RecordError
from safealign.data.taxonomy import MAX_SEVERITY, Taxonomy

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def check_fields(row: Mapping[str, Any], required: frozenset[str], allowed: frozenset[str]) -> None:
    """Reject rows with a missing required field or a field the format does not know."""
    keys = row.keys()
    if not required <= keys:
        missing = sorted(required - keys)
        raise RecordError(missing[0], "missing field" + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))
    if not keys <= allowed:
        unknown = sorted(keys - allowed)
        raise RecordError(unknown[0], "unknown field for this format" + (f" (also: {', '.join(unknown[1:])})" if unknown[1:] else ""))


def text(row: Mapping[str, Any], name: str, *, allow_empty: bool = False) -> str:
    """A string field; empty (or blank) only when `allow_empty`."""
    value = row[name]
    if type(value) is not str:
        raise RecordError(name, f"expected a string, got {_kind(value)}")
    if not allow_empty and not value.strip():
        raise RecordError(name, "empty")
    return valid_unicode(name, value)


def valid_unicode(name: str, value: str) -> str:
    """`value` unless it holds a lone surrogate, which no tokenizer or UTF-8 writer accepts."""
    if not value.isascii():
        bad = SURROGATE.search(value)
        if bad:
            raise RecordError(name, f"not valid Unicode text: a lone surrogate U+{ord(bad.group()):04X} at character {bad.start()}")
    return value


def optional_text(row: Mapping[str, Any], name: str) -> str | None:
    """A string field that may be absent or null."""
    value = row.get(name)
    if value is None:
        return None
    if type(value) is not str:
        raise RecordError(name, f"expected a string or null, got {_kind(value)}")
    return valid_unicode(name, value)


def boolean(row: Mapping[str, Any], name: str, textual: bool = False) -> bool:
    """A true/false field."""
    value = row[name]
    if type(value) is bool:
        return value
    if textual and type(value) is str:
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise RecordError(name, f"expected true or false, got {_show(value)}")


def optional_boolean(row: Mapping[str, Any], name: str, textual: bool = False) -> bool | None:
    """A true/false field that may be absent or null."""
    if row.get(name) is None or (textual and row[name] == ""):
        return None
    return boolean(row, name, textual)


def response_id(row: Mapping[str, Any], name: str, textual: bool = False) -> int:
    """`better_response_id` / `safer_response_id`: 0 or 1 (DESIGN §2)."""
    value = integer(row, name, textual)
    if value not in (0, 1):
        raise RecordError(name, f"must be 0 or 1, got {_show(row[name])}")
    return value


def severity(row: Mapping[str, Any], name: str, textual: bool = False) -> int:
    """A severity level 0–3 (0 safe, 1 minor, 2 moderate, 3 severe)."""
    value = integer(row, name, textual)
    if not 0 <= value <= MAX_SEVERITY:
        raise RecordError(name, f"severity must be 0–{MAX_SEVERITY}, got {value}")
    return value


def optional_severity(row: Mapping[str, Any], name: str, textual: bool = False) -> int | None:
    """A severity level that may be absent or null."""
    if row.get(name) is None or (textual and row[name] == ""):
        return None
    return severity(row, name, textual)


def score(row: Mapping[str, Any], name: str, textual: bool = False, low: float = 0, high: float = 4) -> float | None:
    """A rating in [low, high]; absent, null or empty means missing (None)."""
    value = row.get(name)
    if value is None or (textual and value == ""):
        return None
    if textual and type(value) is str:
        try:
            value = float(value)
        except ValueError:
            raise RecordError(name, f"expected a number, got {_show(value)}") from None
    if type(value) not in (int, float):
        raise RecordError(name, f"expected a number, got {_kind(value)}")
    if not low <= value <= high:
        raise RecordError(name, f"must be in {low:g}–{high:g}, got {value:g}")
    return float(value)


def category_flags(row: Mapping[str, Any], name: str, taxonomy: Taxonomy) -> tuple[str, ...]:
    """A dict of every category of `taxonomy` to true/false; returns the true ones, in taxonomy order."""
    value = row[name]
    if type(value) is not dict:
        raise RecordError(name, f"expected an object of {len(taxonomy)} {taxonomy.name} categories, got {_kind(value)}")
    # Set comparisons and map() keep this hot path (2 calls per PKU v1 pair) in C.
    if value.keys() != taxonomy.key_set:
        unknown = [k for k in value if k not in taxonomy]
        if unknown:
            raise RecordError(name, f"unknown {taxonomy.name} category {unknown[0]!r}")
        missing = [c for c in taxonomy.categories if c not in value]
        raise RecordError(name, f"missing {taxonomy.name} category {missing[0]!r}")
    if set(map(type, value.values())) != {bool}:
        key, flag = next((k, v) for k, v in value.items() if type(v) is not bool)
        raise RecordError(name, f"category {key!r}: expected true or false, got {_show(flag)}")
    return tuple(compress(taxonomy.categories, map(value.__getitem__, taxonomy.categories)))


def category_name(row: Mapping[str, Any], name: str, taxonomy: Taxonomy) -> str:
    """One category name of `taxonomy`."""
    value = text(row, name)
    if value not in taxonomy:
        raise RecordError(name, f"unknown {taxonomy.name} category {value!r}")
    return value


def check_safety(prefix: str, is_safe: bool | None, categories: tuple[str, ...], level: int | None) -> None:
    """One response's labels must agree: safe means severity 0 and no harm category; unsafe means severity ≥ 1."""
    if is_safe is None:
        return
    if is_safe and categories:
        raise RecordError(prefix, f"inconsistent safety labels: labelled safe but has harm category {categories[0]!r}")
    if level is not None and is_safe != (level == 0):
        state = "safe" if is_safe else "unsafe"
        raise RecordError(prefix, f"inconsistent safety labels: labelled {state} with severity level {level}")


def check_pair_safety(safe_0: bool | None, safe_1: bool | None, safer_id: int) -> None:
    """The safer response cannot be labelled unsafe while the other is labelled safe (DESIGN §3)."""
    safer, other = (safe_1, safe_0) if safer_id else (safe_0, safe_1)
    if safer is False and other is True:
        raise RecordError(
            "safer_response_id",
            f"inconsistent safety labels: safer response {safer_id} is labelled unsafe "
            f"while response {1 - safer_id} is labelled safe",
        )


def check_distinct(a_name: str, a: str, b: str) -> None:
    """A preference between two identical responses carries no information."""
    if a == b:
        raise RecordError(a_name, "the two responses are identical (no preference)")


def integer(row: Mapping[str, Any], name: str, textual: bool = False) -> int:
    """A whole number (ints that pandas or Parquet widened to floats are accepted)."""
    value = row[name]
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    if textual and type(value) is str and value.strip().lstrip("-").isdigit():
        return int(value)
    raise RecordError(name, f"expected an integer, got {_show(value)}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _show(value: Any) -> str:
    text_ = repr(value)
    return text_ if len(text_) <= 40 else text_[:37] + "..."
