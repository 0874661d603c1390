"""`eval moderation`: the moderator's figures beside a TF-IDF + logistic-regression floor."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safealign.data.records import QARecord, dialogue
from safealign.data.taxonomy import MAX_SEVERITY, get_taxonomy
from safealign.moderation.metrics import binary_scores, expected_calibration_error
from safealign.moderation.model import Moderator, moderation_text


@dataclass
class ModerationScores:
    """Predictions of one judge on the evaluation records, and the labels."""

    name: str
    p_unsafe: list[float]
    threshold: float
    category_scores: list[list[float]]  # per record, per category of the taxonomy
    severity: list[int]  # predicted level 0–3
    figures: dict[str, Any] = field(default_factory=dict)


def score_moderator(moderator: Moderator, records: list[QARecord]) -> ModerationScores:
    """The trained moderator's predictions."""
    verdicts = moderator.predict([dialogue(r) for r in records], [r.response for r in records])
    names = moderator.taxonomy.categories
    return ModerationScores("model", [v.unsafe_probability for v in verdicts], moderator.meta.threshold,
                            [[v.category_scores[c] for c in names] for v in verdicts], [v.severity for v in verdicts])


def score_baseline(train: list[QARecord], records: list[QARecord], taxonomy: str) -> ModerationScores:
    """TF-IDF (word 1–2-grams) + class-balanced logistic regression per label, trained on `train`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    names = get_taxonomy(taxonomy).categories
    texts = [moderation_text(dialogue(r), r.response) for r in train]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, max_features=50_000, sublinear_tf=True)
    x_train = vectorizer.fit_transform(texts)
    x_eval = vectorizer.transform([moderation_text(dialogue(r), r.response) for r in records])
    y_unsafe = [int(not r.is_safe) for r in train]
    p_unsafe = _fit_predict(x_train, y_unsafe, x_eval, LogisticRegression)
    category_scores = [[0.0] * len(names) for _ in records]
    labelled = [i for i, r in enumerate(train) if r.is_safe or r.taxonomy == taxonomy]
    for j, name in enumerate(names):
        ys = [int(name in train[i].harm_categories) for i in labelled]
        for i, p in enumerate(_fit_predict(x_train[labelled], ys, x_eval, LogisticRegression)):
            category_scores[i][j] = p
    with_level = [i for i, r in enumerate(train) if r.is_safe or r.severity is not None]
    levels = [0 if train[i].is_safe else train[i].severity for i in with_level]
    if len(set(levels)) > 1:
        clf = LogisticRegression(max_iter=1000, class_weight="balanced").fit(x_train[with_level], levels)
        severity = [int(v) for v in clf.predict(x_eval)]
    else:
        severity = [levels[0] if levels else 0] * len(records)
    return ModerationScores("tfidf+logreg", p_unsafe, 0.5, category_scores, severity)


def _fit_predict(x_train: Any, y: list[int], x_eval: Any, model_cls: Any) -> list[float]:
    if len(set(y)) < 2:  # one class only: predict its rate
        return [float(y[0]) if y else 0.0] * x_eval.shape[0]
    clf = model_cls(max_iter=1000, class_weight="balanced").fit(x_train, y)
    return clf.predict_proba(x_eval)[:, 1].tolist()


def figures(scores: ModerationScores, records: list[QARecord], taxonomy: str) -> dict[str, Any]:
    """Unsafe P/R/F1, ECE, per-category / micro / macro F1 and severity accuracy + confusion."""
    names = get_taxonomy(taxonomy).categories
    labels = [float(not r.is_safe) for r in records]
    out: dict[str, Any] = {"unsafe": binary_scores(scores.p_unsafe, labels, scores.threshold), "threshold": scores.threshold,
                           "ece": expected_calibration_error(scores.p_unsafe, labels)}
    labelled = [i for i, r in enumerate(records) if r.is_safe or r.taxonomy == taxonomy]
    per_category, tp_all, fp_all, fn_all = {}, 0, 0, 0
    for j, name in enumerate(names):
        s = binary_scores([scores.category_scores[i][j] for i in labelled],
                          [float(name in records[i].harm_categories) for i in labelled], 0.5)
        tp_all, fp_all, fn_all = tp_all + s["tp"], fp_all + s["fp"], fn_all + s["fn"]
        if s["tp"] + s["fn"]:  # categories present in the evaluation data
            per_category[name] = {"f1": s["f1"], "support": s["tp"] + s["fn"]}
    out["category_f1"] = per_category
    out["category_micro_f1"] = 2 * tp_all / (2 * tp_all + fp_all + fn_all) if tp_all + fp_all + fn_all else None
    out["category_macro_f1"] = sum(v["f1"] for v in per_category.values()) / len(per_category) if per_category else None
    with_level = [(i, 0 if r.is_safe else r.severity) for i, r in enumerate(records) if r.is_safe or r.severity is not None]
    confusion = [[0] * (MAX_SEVERITY + 1) for _ in range(MAX_SEVERITY + 1)]
    for i, level in with_level:
        confusion[level][scores.severity[i]] += 1
    out["severity_accuracy"] = sum(confusion[k][k] for k in range(MAX_SEVERITY + 1)) / len(with_level) if with_level else None
    out["severity_confusion"] = confusion  # rows: true level, columns: predicted
    return out


def write_pr_curve(all_scores: list[ModerationScores], records: list[QARecord], path: Path) -> Path:
    """Precision–recall curves of unsafe detection, one line per judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    labels = [int(not r.is_safe) for r in records]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for scores in all_scores:
        if len(set(labels)) < 2:
            break
        precision, recall, _ = precision_recall_curve(labels, scores.p_unsafe)
        ap = average_precision_score(labels, scores.p_unsafe)
        ax.plot(recall, precision, label=f"{scores.name} (AP {ap:.3f})")
    ax.set_xlabel("recall (unsafe)")
    ax.set_ylabel("precision (unsafe)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Unsafe detection: precision–recall")
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict[str, dict[str, Any]], out: Path) -> Path:
    """metrics.json with the figures of every judge."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    return out / "metrics.json"


@dataclass(kw_only=True)
class ModerationEvalConfig:
    """`safealign eval moderation`: a moderator's figures on labelled data, beside a TF-IDF floor."""

    model: str
    """A moderation folder (from `safealign train moderation`)."""
    data: list[str]
    """Labelled evaluation data (QA records or dual pairs); one entry per flag."""
    train_data: list[str] = field(default_factory=list)
    """Data for the TF-IDF baseline (default: the moderator's own training data, from its run's config.yaml)."""
    format: str | None = None
    """Source format (detected when not given)."""
    output_dir: str = "runs/eval-moderation"
    """Folder for metrics.json and pr_curve.png."""
    skip_invalid: bool = False
    """Skip bad records instead of stopping."""


def run_moderation_eval(cfg: ModerationEvalConfig) -> dict[str, Any]:
    """Score the moderator and the floor, write metrics.json and pr_curve.png; returns {judge: figures} and the counts."""
    import yaml

    from safealign.data.load import load
    from safealign.moderation.train import qa_records

    moderator = Moderator.load(cfg.model)
    records = qa_records(load(cfg.data, cfg.format, strict=not cfg.skip_invalid).records)
    train_data = cfg.train_data
    if not train_data:
        run_config = Path(cfg.model).parent / "config.yaml"
        if not run_config.is_file():
            raise FileNotFoundError(2, "no run config.yaml beside the model; pass --train-data for the baseline", str(run_config))
        train_data = yaml.safe_load(run_config.read_text())["data"]
    train_records = qa_records(load(train_data, cfg.format, strict=not cfg.skip_invalid).records)
    taxonomy = moderator.meta.taxonomy
    judges = [score_moderator(moderator, records), score_baseline(train_records, records, taxonomy)]
    results = {j.name: figures(j, records, taxonomy) for j in judges}
    out = Path(cfg.output_dir)
    write_report(results, out)
    write_pr_curve(judges, records, out / "pr_curve.png")
    return {"responses": len(records), "unsafe": sum(not r.is_safe for r in records), "judges": results}
