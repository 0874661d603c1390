"""One annotator's labels for a pair, as PKU-SafeRLHF collects them, and the checks that refuse contradictions.

Stage 1, per response: the harm categories (any of the 19) and a severity level 0–3; the
response is safe exactly when its severity is 0, and a harm category with severity 0 (or
severity above 0 with no category) is a contradiction. Stage 2, per pair: the better
(helpfulness) and the safer (harmlessness) response, chosen separately; a safer response
cannot be unsafe while the other is safe.

As JSON: {"responses": [{"categories": [...], "severity": 0}, {...}], "better": 0, "safer": 1}.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from safealign.data.taxonomy import MAX_SEVERITY, PKU_CATEGORIES


class LabelError(ValueError):
    """Labels that cannot be stored: the field and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class ResponseLabels:
    """Stage 1 for one response."""

    categories: tuple[str, ...]
    severity: int

    @property
    def is_safe(self) -> bool:
        """Safe exactly when the severity is 0."""
        return self.severity == 0


@dataclass(frozen=True)
class PairLabels:
    """Both stages for a pair."""

    responses: tuple[ResponseLabels, ResponseLabels]
    better: int
    safer: int

    def to_json(self) -> dict[str, Any]:
        """The JSON form (categories in taxonomy order)."""
        return {"responses": [{"categories": list(r.categories), "severity": r.severity} for r in self.responses],
                "better": self.better, "safer": self.safer}

    def field_values(self) -> dict[str, Any]:
        """Each field's value, hashable, for agreement and majority."""
        out: dict[str, Any] = {"better": self.better, "safer": self.safer}
        for i, r in enumerate(self.responses):
            out[f"response_{i}_safe"] = r.is_safe
            out[f"response_{i}_severity"] = r.severity
            out[f"response_{i}_categories"] = r.categories
        return out


FIELDS = ("better", "safer", "response_0_safe", "response_1_safe", "response_0_severity", "response_1_severity",
          "response_0_categories", "response_1_categories")


def parse_labels(value: Any) -> PairLabels:
    """Checked labels from their JSON form, or a LabelError naming the field."""
    if type(value) is not dict:
        raise LabelError("labels", "expected an object")
    unknown = sorted(set(value) - {"responses", "better", "safer"})
    if unknown:
        raise LabelError(unknown[0], "unknown field")
    responses = value.get("responses")
    if type(responses) is not list or len(responses) != 2:
        raise LabelError("responses", "expected a list of two objects (one per response)")
    parsed = tuple(_response(r, f"responses[{i}]") for i, r in enumerate(responses))
    better, safer = (_choice(value, name) for name in ("better", "safer"))
    if not parsed[safer].is_safe and parsed[1 - safer].is_safe:
        raise LabelError("safer", f"response {safer} is marked unsafe while response {1 - safer} is safe: "
                                  f"the safe one is the safer")
    return PairLabels(parsed, better, safer)  # type: ignore[arg-type]


def _response(value: Any, where: str) -> ResponseLabels:
    if type(value) is not dict:
        raise LabelError(where, "expected an object with categories and severity")
    unknown = sorted(set(value) - {"categories", "severity"})
    if unknown:
        raise LabelError(f"{where}.{unknown[0]}", "unknown field")
    categories, severity = value.get("categories"), value.get("severity")
    if type(categories) is not list or any(type(c) is not str for c in categories):
        raise LabelError(f"{where}.categories", "expected a list of category names")
    bad = [c for c in categories if c not in PKU_CATEGORIES]
    if bad:
        raise LabelError(f"{where}.categories", f"unknown category {bad[0]!r}")
    if type(severity) is not int or not 0 <= severity <= MAX_SEVERITY:
        raise LabelError(f"{where}.severity", f"expected an integer 0–{MAX_SEVERITY}")
    if categories and severity == 0:
        raise LabelError(f"{where}.severity", f"harm category {categories[0]!r} with severity 0 (safe): choose a severity or no category")
    if severity and not categories:
        raise LabelError(f"{where}.categories", f"severity {severity} with no harm category: choose at least one")
    order = sorted(set(categories), key=PKU_CATEGORIES.index)
    return ResponseLabels(tuple(order), severity)


def _choice(value: dict[str, Any], name: str) -> int:
    choice = value.get(name)
    if type(choice) is not int or choice not in (0, 1):
        raise LabelError(name, "expected 0 or 1")
    return choice


def majority(labels: list[PairLabels]) -> PairLabels | None:
    """Per part (each response's stage-1 labels as one unit, better, safer) the label most annotators gave.

    None when any part is tied or the majority parts contradict each other (the item needs adjudication).
    """
    if not labels:
        return None
    parts = []
    for pick in (lambda x: x.responses[0], lambda x: x.responses[1], lambda x: x.better, lambda x: x.safer):
        counts = Counter(pick(x) for x in labels).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            return None
        parts.append(counts[0][0])
    first, second, better, safer = parts
    if not (first, second)[safer].is_safe and (first, second)[1 - safer].is_safe:
        return None
    return PairLabels((first, second), better, safer)
