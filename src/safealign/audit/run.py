"""`safealign audit labels` and `safealign audit clean`: find, score and fix label errors.

`audit_labels` embeds every item (cached by content hash, so a second audit of the same
data embeds nothing), finds its k nearest neighbours, estimates the noise transition matrix
with HOC and flags items with SimiFeat (`simifeat-rank`, `simifeat-vote`), or with confident
learning on out-of-fold probabilities of a logistic regression over the same embeddings
(`confident`); `hoc` estimates T only and flags nothing. `write_audit` writes
`label_issues.jsonl`, `summary.json` and `report.html`; `clean_records` applies the flagged
fixes at or above a confidence, relabelling or dropping the records.
"""

from __future__ import annotations

import hashlib
import html
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from safealign.audit.credibility import (
    Detection,
    NoiseEstimate,
    confident_learning,
    estimate_transition,
    nearest_neighbours,
    out_of_fold_probabilities,
    simifeat,
)
from safealign.audit.labels import LabelSet, apply_fix, label_sets
from safealign.data.records import Record

METHODS = ("simifeat-rank", "simifeat-vote", "confident", "hoc")


def default_cache_dir() -> Path:
    """Where embeddings are cached: $SAFEALIGN_CACHE/embeddings or ~/.cache/safealign/embeddings."""
    import os

    root = os.environ.get("SAFEALIGN_CACHE")
    return Path(root) / "embeddings" if root else Path.home() / ".cache" / "safealign" / "embeddings"


class EmbeddingCache:
    """Vectors by (encoder, max length, text) hash in one SQLite file: reruns embed only new texts."""

    def __init__(self, folder: Path, encoder_key: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(folder / "embeddings.sqlite"))
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, dim INTEGER, data BLOB)")
        self.encoder_key = encoder_key

    def key(self, text: str) -> str:
        """The cache key of one text under this encoder."""
        return hashlib.sha256(f"{self.encoder_key}\x00{text}".encode()).hexdigest()

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `keys`."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self.db.execute(f"SELECT key, data FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update({k: np.frombuffer(blob, dtype=np.float32) for k, blob in rows})
        return found

    def put(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store vectors."""
        self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                            [(k, int(v.size), np.asarray(v, dtype=np.float32).tobytes()) for k, v in items])
        self.db.commit()


def encoder_identity(name: str, max_length: int) -> str:
    """What makes two encoders' vectors interchangeable: a hash of the resolved folder's weights (or the hub id) and the length.

    A folder retrained in place gets new weights, so a new identity: its old vectors are never reused.
    """
    from safealign.models.registry import resolve_model

    path = Path(resolve_model(name))
    if not path.is_dir():
        return f"{name}|{max_length}"
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return f"{digest.hexdigest()}|{max_length}"


def embed_texts(texts: list[str], encoder: str = "minilm", max_length: int = 256, cache_dir: Path | None = None,
                batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings of `texts`, size = (N, H), cached by content hash."""
    cache = EmbeddingCache(cache_dir or default_cache_dir(), encoder_identity(encoder, max_length))
    keys = [cache.key(t) for t in texts]
    found = cache.get(sorted(set(keys)))
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in found}.items())
    if missing:
        import torch

        from safealign.models.encoder import SentenceEncoder

        model = SentenceEncoder(encoder, max_length)
        chunks = range(0, len(missing), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"embedding {len(missing)} texts", unit="batch")
        for start in chunks:
            part = missing[start : start + batch_size]
            with torch.no_grad():
                vectors = model([t for _, t in part], batch_size=batch_size).numpy()
            cache.put(zip([k for k, _ in part], vectors))
            found.update(dict(zip([k for k, _ in part], vectors)))
    return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)


@dataclass
class SetAudit:
    """The audit of one label set."""

    labels: LabelSet
    estimate: NoiseEstimate | None
    detection: Detection | None
    joint: np.ndarray | None = None  # confident learning's calibrated joint (given, true)

    def noise_rate(self) -> float | None:
        """The estimated share of wrong labels (HOC's, or confident learning's off-diagonal mass)."""
        if self.estimate is not None:
            return self.estimate.noise_rate
        if self.joint is not None:
            return float(1.0 - np.trace(self.joint))
        return None

    def summary(self) -> dict[str, Any]:
        """Counts, the estimate and how many were flagged per given class."""
        y = np.array([it.label for it in self.labels.items])
        out: dict[str, Any] = {"label": self.labels.name, "items": len(y), "classes": self.labels.classes,
                               "given_per_class": np.bincount(y, minlength=len(self.labels.classes)).tolist(),
                               "noise_rate": self.noise_rate()}
        if self.estimate is not None:
            out["transition"] = self.estimate.transition.round(4).tolist()
            out["clean_prior"] = self.estimate.prior.round(4).tolist()
        if self.joint is not None:
            out["confident_joint"] = self.joint.round(4).tolist()
        if self.detection is not None:
            flagged = self.detection.is_issue
            out["flagged"] = int(flagged.sum())
            out["flagged_per_class"] = np.bincount(y[flagged], minlength=len(self.labels.classes)).tolist()
        return out


@dataclass
class Audit:
    """Every label set's audit, with the settings that produced it."""

    sets: list[SetAudit]
    settings: dict[str, Any] = field(default_factory=dict)


def item_features(labels: LabelSet, embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """One feature row per item: its text's embedding, or for a pair the difference of the two shown."""
    texts = [t for item in labels.items for t in item.texts]
    vectors = embed(texts)
    if labels.oriented:
        return vectors[0::2] - vectors[1::2]
    return vectors


def audit_set(labels: LabelSet, features: np.ndarray, method: str = "simifeat-rank", k: int = 10,
              seed: int = 0) -> SetAudit:
    """HOC's estimate and the chosen detection for one label set."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    y = np.array([it.label for it in labels.items])
    num_classes = len(labels.classes)
    if len(y) < 3:
        raise ValueError(f"{labels.name}: {len(y)} item(s): too few to audit")
    k = min(k, len(y) - 1)
    if method == "confident":
        if labels.oriented:  # both orientations of every pair, so the classifier sees the antisymmetry
            both_x, both_y = np.concatenate([features, -features]), np.concatenate([y, 1 - y])
            probabilities = out_of_fold_probabilities(both_x, both_y, num_classes, seed=seed)[: len(y)]
        else:
            probabilities = out_of_fold_probabilities(features, y, num_classes, seed=seed)
        detection, joint = confident_learning(probabilities, y)
        return SetAudit(labels, None, detection, joint)
    neighbours = nearest_neighbours(features, k, oriented=labels.oriented)
    estimate = estimate_transition(y, neighbours, num_classes, seed=seed)
    if method == "hoc":
        return SetAudit(labels, estimate, None)
    detection = simifeat(y, neighbours, num_classes, method.split("-")[1], estimate)
    return SetAudit(labels, estimate, detection)


def audit_labels(records: list[Record], label: str, method: str = "simifeat-rank", k: int = 10, encoder: str = "minilm",
                 max_length: int = 256, cache_dir: Path | None = None, seed: int = 0, progress: bool = True,
                 embed: Callable[[list[str]], np.ndarray] | None = None) -> Audit:
    """Audit `label` of `records` (every label set of it); `embed` replaces the sentence encoder (tests)."""
    sets = label_sets(records, label, seed)
    if not sets:
        raise ValueError(f"no record has a {label!r} label")
    embed = embed or (lambda texts: embed_texts(texts, encoder, max_length, cache_dir, progress=progress))
    audits = [audit_set(s, item_features(s, embed), method, k, seed) for s in sets if len(s.items) >= 3]
    return Audit(audits, {"label": label, "method": method, "k": k, "encoder": encoder, "max_length": max_length, "seed": seed})


def issue_rows(audit: Audit, records: list[Record]) -> list[dict[str, Any]]:
    """One row per audited label: source, line, field, given, suggested, confidence, is_issue (and score, label set)."""
    rows = []
    for part in audit.sets:
        if part.detection is None:
            continue
        d = part.detection
        for n, item in enumerate(part.labels.items):
            origin = records[item.record].origin or "?:0"
            source, _, line = origin.rpartition(":")
            suggested = part.labels.value_of(item, int(d.suggested[n]))
            given = item.given
            if part.labels.name.startswith("categories:"):
                category = part.labels.name.split(":", 1)[1]
                given, suggested = [category, bool(given)], [category, bool(suggested)]
            rows.append({"source": source, "line": int(line) if line.isdigit() else line, "field": item.field,
                         "label_set": part.labels.name, "slot": item.slot, "given": given, "suggested": suggested,
                         "confidence": round(float(d.confidence[n]), 6), "score": round(float(d.score[n]), 6),
                         "is_issue": bool(d.is_issue[n])})
    return rows


def write_audit(audit: Audit, records: list[Record], out: Path) -> dict[str, Any]:
    """label_issues.jsonl, summary.json and report.html in `out`; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    rows = issue_rows(audit, records)
    with open(out / "label_issues.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    summary = {"settings": audit.settings, "records": len(records), "sets": [s.summary() for s in audit.sets],
               "flagged": sum(r["is_issue"] for r in rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_report(audit, records, rows, out)
    return summary


def _write_report(audit: Audit, records: list[Record], rows: list[dict[str, Any]], out: Path) -> None:
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [f"<h1>Label audit: {html.escape(audit.settings['label'])} ({html.escape(audit.settings['method'])})</h1>",
             f"<p>{len(records)} records; {sum(r['is_issue'] for r in rows)} labels flagged.</p>"]
    for part in audit.sets:
        s = part.summary()
        matrix = s.get("transition") or s.get("confident_joint")
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        if matrix is not None:
            axes[0].imshow(np.array(matrix), cmap="Blues", vmin=0, vmax=1 if "transition" in s else None)
            for (i, j), v in np.ndenumerate(np.array(matrix)):
                axes[0].text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
            ticks = range(len(part.labels.classes))
            axes[0].set_xticks(ticks, part.labels.classes, fontsize=8)
            axes[0].set_yticks(ticks, part.labels.classes, fontsize=8)
            axes[0].set_xlabel("given label")
            axes[0].set_ylabel("true label" if "transition" in s else "given label")
            axes[0].set_title("T = P(given | true) (HOC)" if "transition" in s else "confident joint (given, true)")
        if part.detection is not None:
            flagged = part.detection.is_issue
            axes[1].hist([part.detection.score[~flagged], part.detection.score[flagged]], bins=20, stacked=True,
                         label=["kept", "flagged"], color=["#4f81bd", "#c0504d"])
            axes[1].set_xlabel("score of the given label")
            axes[1].legend(fontsize=8)
        else:
            axes[1].axis("off")
        fig.suptitle(f"{part.labels.name}: {s['items']} items, estimated noise {s['noise_rate']:.3f}"
                     if s["noise_rate"] is not None else part.labels.name)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        parts.append(f"<h2>{html.escape(part.labels.name)}</h2><img src='data:image/png;base64,"
                     f"{base64.b64encode(buffer.getvalue()).decode()}'>")
        if part.detection is None:
            continue
        flagged = [n for n in np.argsort(-part.detection.confidence) if part.detection.is_issue[n]][:10]
        body = "".join(
            f"<tr><td>{html.escape(records[part.labels.items[n].record].origin or '')}</td>"
            f"<td>{html.escape(part.labels.classes[part.labels.items[n].label])} → "
            f"{html.escape(part.labels.classes[int(part.detection.suggested[n])])} ({part.detection.confidence[n]:.2f})</td>"
            + "".join(f"<td><pre>{html.escape(t[-600:])}</pre></td>" for t in part.labels.items[n].texts) + "</tr>"
            for n in flagged)
        if body:
            parts.append("<p>The most confident issues (labels as shown; a pair in its shown order):</p>"
                         f"<table>{body}</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;} td{border:1px solid #ccc;padding:3px 6px;"
             "vertical-align:top;} table{border-collapse:collapse;} pre{white-space:pre-wrap;max-width:420px;margin:0;}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>label audit</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
    (out / "report.html").write_text(page, encoding="utf-8")


@dataclass
class CleanReport:
    """What `clean_records` did: read = kept + relabelled + dropped."""

    read: int = 0
    kept: int = 0
    relabelled: int = 0
    dropped: int = 0
    unmatched: int = 0  # issue rows that name no record of the data (another file, or an edited one)
    changes: list[dict[str, Any]] = field(default_factory=list)


def clean_records(records: list[Record], issues: list[dict[str, Any]], min_confidence: float = 0.0,
                  mode: str = "relabel") -> tuple[list[Record], CleanReport]:
    """The records with every flagged label at or above `min_confidence` fixed (`relabel`) or the record dropped (`drop`).

    Each changed record's meta gets `audit`: a list of {field, from, to, confidence, also}.
    """
    if mode not in ("relabel", "drop"):
        raise ValueError(f"mode must be relabel or drop, got {mode!r}")
    by_origin = {r.origin: i for i, r in enumerate(records)}
    wanted: dict[int, list[dict[str, Any]]] = {}
    report = CleanReport(read=len(records))
    for row in issues:
        if not row.get("is_issue") or row.get("confidence", 0.0) < min_confidence:
            continue
        index = by_origin.get(f"{row['source']}:{row['line']}")
        if index is None:
            report.unmatched += 1
            continue
        wanted.setdefault(index, []).append(row)
    out: list[Record] = []
    for i, record in enumerate(records):
        rows = wanted.get(i)
        if not rows:
            out.append(record)
            report.kept += 1
            continue
        if mode == "drop":
            report.dropped += 1
            report.changes.append({"origin": record.origin, "dropped": True, "fields": [r["field"] for r in rows]})
            continue
        notes = []
        for row in rows:
            value = tuple(row["suggested"]) if isinstance(row["suggested"], list) else row["suggested"]
            record, also = apply_fix(record, row["field"], row.get("slot"), value)
            notes.append({"field": row["field"], "from": row["given"], "to": row["suggested"], "confidence": row["confidence"],
                          "also": also})
        record = replace(record, meta={**(record.meta or {}), "audit": notes})
        out.append(record)
        report.relabelled += 1
        report.changes.append({"origin": record.origin, "changes": notes})
    return out, report
