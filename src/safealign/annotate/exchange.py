"""Into and out of the studio: pairs from any supported format (audit output included) in, PKU-SafeRLHF v1 out.

Import: dual-preference pairs keep their labels as the item's suggestion (machine-made when
`meta.machine` says so, e.g. `safealign build pairs` output); single-preference pairs become
(chosen, rejected) with the order as a suggestion; other records cannot be a pair and are
rejected, counted, with why. An audit's `label_issues.jsonl` imports the records it flags
(`is_issue`), read back from their source file and line, with the flag as the item's note.

Export: every item with at least one answer, labelled by its adjudication when there is one,
else by the majority of its answers (one answer is its own majority); an item whose majority
is tied or contradictory is left out and counted as unresolved. Each row is PKU-SafeRLHF v1
with a `meta` block: where the labels came from, every annotator's raw labels, and the
machine suggestion.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safealign.annotate.labels import LabelError, PairLabels, majority, parse_labels
from safealign.annotate.store import Store
from safealign.data.errors import DataError
from safealign.data.formats.pku import to_v1_row
from safealign.data.records import DualPreferencePair, PreferencePair, Record

AUDIT_FIELDS = frozenset({"source", "line", "field", "label_set", "given", "suggested", "confidence", "is_issue"})


@dataclass
class ImportReport:
    """read = added + already_there + rejected."""

    read: int = 0
    added: int = 0
    already_there: int = 0
    rejected: list[str] = field(default_factory=list)


def suggestion_of(record: DualPreferencePair) -> dict[str, Any] | None:
    """The labels a pair already carries, as a suggestion: complete labels when they check, else the parts it has."""
    machine = bool((record.meta or {}).get("machine"))
    if record.better_response_id is not None and record.severity(0) is not None and record.severity(1) is not None:
        try:
            labels = parse_labels({"responses": [{"categories": list(record.harm_categories(i)), "severity": record.severity(i)}
                                                 for i in (0, 1)],
                                   "better": record.better_response_id, "safer": record.safer_response_id})
            return {"labels": labels.to_json(), "machine": machine, "scores": (record.meta or {}).get("scores")}
        except LabelError:
            pass
    partial = {"safer": record.safer_response_id, "better": record.better_response_id,
               "safe": [record.is_safe(0), record.is_safe(1)]}
    return {"partial": partial, "machine": machine, "scores": (record.meta or {}).get("scores")}


def item_of(record: Record, note: str | None = None) -> dict[str, Any] | None:
    """An item's columns from a pair record, or None for a record that is not a pair."""
    if isinstance(record, DualPreferencePair):
        return {"prompt": record.prompt, "response_0": record.response_0, "response_1": record.response_1,
                "system": record.system, "note": note, "origin": record.origin or "?",
                "sources": {"prompt_source": record.prompt_source, "response_0_source": record.response_0_source,
                            "response_1_source": record.response_1_source},
                "suggestion": suggestion_of(record), "meta": record.meta}
    if isinstance(record, PreferencePair):
        return {"prompt": record.prompt, "response_0": record.chosen, "response_1": record.rejected,
                "system": record.system, "note": note or "response 0 is the source's chosen answer", "origin": record.origin or "?",
                "sources": {"prompt_source": record.source, "response_0_source": None, "response_1_source": None},
                "suggestion": {"partial": {"better": 0}, "machine": False, "scores": None}, "meta": record.meta}
    return None


def import_records(store: Store, records: Iterable[Record], notes: dict[str, str] | None = None) -> ImportReport:
    """Add the pairs among `records` to the store."""
    report = ImportReport()
    items = []
    for record in records:
        report.read += 1
        item = item_of(record, (notes or {}).get(record.origin or ""))
        if item is None:
            report.rejected.append(f"{record.origin}: a {record.record_type} record is not a pair of responses")
            continue
        items.append(item)
    report.added, report.already_there = store.add_items(items)
    return report


def is_audit_file(path: Path) -> bool:
    """Whether `path` is an audit's label_issues.jsonl (by its first row's fields)."""
    if not path.name.endswith(".jsonl"):
        return False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(row, dict) and AUDIT_FIELDS <= row.keys()
    return False


def audited_records(path: Path) -> tuple[list[Record], dict[str, str], int]:
    """The records an audit flagged, read from their sources; (records, notes by origin, flagged labels)."""
    from safealign.data.load import load

    wanted: dict[str, list[str]] = {}
    flagged = 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not AUDIT_FIELDS <= row.keys():
                raise DataError(f"{path}:{n}: not an audit row (needs {', '.join(sorted(AUDIT_FIELDS))})")
            if not row["is_issue"]:
                continue
            flagged += 1
            origin = f"{row['source']}:{row['line']}"
            wanted.setdefault(origin, []).append(
                f"audit: {row['field']} given {row['given']!r}, suggested {row['suggested']!r} (confidence {row['confidence']:.2f})")
    sources = sorted({origin.rpartition(":")[0] for origin in wanted})
    records: list[Record] = []
    for source in sources:
        if not Path(source).exists():
            raise DataError(f"{path}: the audited source {source} is not there (run the import where the audit ran)")
        records += [r for r in load([source]).records if r.origin in wanted]
    return records, {origin: "; ".join(notes) for origin, notes in wanted.items()}, flagged


@dataclass
class ExportReport:
    """items = exported + unanswered + unresolved."""

    items: int = 0
    exported: int = 0
    adjudicated: int = 0
    unanswered: int = 0
    unresolved: list[int] = field(default_factory=list)


def final_labels(answers: list[dict[str, Any]], adjudication: dict[str, Any] | None) -> tuple[PairLabels | None, str]:
    """An item's labels and where they came from: its adjudication, else the majority of its labelled answers."""
    if adjudication is not None:
        return parse_labels(adjudication), "adjudication"
    labelled = [parse_labels(a["labels"]) for a in answers if a["labels"] is not None and a["status"] != "skipped"]
    if not labelled:
        return None, "unanswered"
    return majority(labelled), ("single" if len(labelled) == 1 else "majority")


def export_rows(store: Store) -> tuple[list[dict[str, Any]], ExportReport]:
    """PKU-SafeRLHF v1 rows (with meta) of every labelled item."""
    report = ExportReport()
    adjudications = store.adjudications()
    by_item: dict[int, list[dict[str, Any]]] = {}
    for answer in store.answers():
        by_item.setdefault(answer["item_id"], []).append(answer)
    rows = []
    for item in store.items():
        report.items += 1
        answers = by_item.get(item.id, [])
        labels, how = final_labels(answers, adjudications.get(item.id))
        if how == "unanswered":
            report.unanswered += 1
            continue
        if labels is None:
            report.unresolved.append(item.id)
            continue
        report.adjudicated += how == "adjudication"
        pair = labelled_pair(item, labels)
        pair.meta = {"labels_from": how, "item_id": item.id, "origin": item.origin, "note": item.note,
                     "annotators": [{k: a[k] for k in ("user", "status", "labels", "comment", "suggestions_shown", "seconds")}
                                    for a in answers],
                     "suggestion": item.suggestion}
        rows.append(to_v1_row(pair))
        report.exported += 1
    return rows, report


def labelled_pair(item: Any, labels: PairLabels) -> DualPreferencePair:
    """An item with its final labels as a dual pair."""
    r0, r1 = labels.responses
    sources = item.sources or {}
    return DualPreferencePair(
        prompt=item.prompt, response_0=item.response_0, response_1=item.response_1,
        better_response_id=labels.better, safer_response_id=labels.safer,
        is_response_0_safe=r0.is_safe, is_response_1_safe=r1.is_safe,
        response_0_harm_categories=r0.categories, response_1_harm_categories=r1.categories,
        response_0_severity=r0.severity, response_1_severity=r1.severity, taxonomy="pku-saferlhf",
        prompt_source=sources.get("prompt_source"), response_0_source=sources.get("response_0_source"),
        response_1_source=sources.get("response_1_source"), system=item.system)


def write_export(store: Store, out: Path) -> ExportReport:
    """Write the export as JSON Lines."""
    rows, report = export_rows(store)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return report


__all__ = ["ImportReport", "ExportReport", "audited_records", "export_rows", "import_records",
           "is_audit_file", "write_export"]
