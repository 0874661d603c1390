"""How well a reward or cost model orders preference pairs, overall and per harm category."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safealign.config import at_least_one
from safealign.data.errors import DataError
from safealign.data.load import load
from safealign.data.records import DualPreferencePair, PreferencePair, Record, dialogue
from safealign.models.template import encode_dialogue
from safealign.inference.scoring import score_texts


@dataclass
class PreferenceReport:
    """Metrics of `safealign eval preference` (names follow `eval/...`)."""

    kind: str
    pairs: int
    accuracy: float  # reward: better scores higher; cost: safer costs lower
    accuracy_sign: float | None  # cost: sign(c) agrees with the is_safe label
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)  # category -> accuracy, pairs
    skipped_unordered: int = 0  # reward: dual pairs with no helpfulness order, left out
    scores_safe: list[float] = field(default_factory=list)
    scores_unsafe: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """The figures without the raw score lists."""
        out = {k: v for k, v in asdict(self).items() if not k.startswith("scores_")}
        out["mean_score_safe"] = _mean(self.scores_safe)
        out["mean_score_unsafe"] = _mean(self.scores_unsafe)
        return out


def evaluate_preference(model: Any, tokenizer: Any, records: list[Record], max_length: int = 512, batch_size: int = 16) -> PreferenceReport:
    """Pairwise accuracy, sign accuracy (cost models) and per-harm-category accuracy."""
    kind = model.kind
    if kind not in ("reward", "cost"):
        raise DataError(f"eval preference needs a reward or cost model, got a {kind!r} model")
    pairs = [r for r in records if isinstance(r, (DualPreferencePair, PreferencePair))]
    unordered = sum(_target(r, kind) is None for r in pairs)
    pairs = [r for r in pairs if _target(r, kind) is not None]  # a reward model cannot be scored on safety-only pairs
    if not pairs:
        raise DataError(f"no preference pairs in the data with a {'helpfulness' if kind == 'reward' else 'safety'} order"
                        + (f" ({unordered} pair(s) without one)" if unordered else ""))
    sequences = []
    for r in pairs:
        turns = dialogue(r)
        first, second = (r.response_0, r.response_1) if isinstance(r, DualPreferencePair) else (r.chosen, r.rejected)
        sequences += [encode_dialogue(tokenizer, turns, first, max_length), encode_dialogue(tokenizer, turns, second, max_length)]
    scores = score_texts(model, sequences, tokenizer.pad_token_id, batch_size)
    report = PreferenceReport(kind, len(pairs), 0.0, None, skipped_unordered=unordered)
    correct_total = 0
    signs_ok = signs_n = 0
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for n, r in enumerate(pairs):
        s = (scores[2 * n], scores[2 * n + 1])
        target = _target(r, kind)  # the response that should score higher (reward) or lower (cost)
        correct = s[target] > s[1 - target] if kind == "reward" else s[target] < s[1 - target]
        correct_total += correct
        if isinstance(r, DualPreferencePair):
            for i in (0, 1):
                label = r.is_safe(i)
                if label is None:
                    continue
                (report.scores_safe if label else report.scores_unsafe).append(s[i])
                signs_ok += (s[i] > 0) == (not label)
                signs_n += 1
            for category in sorted(set(r.response_0_harm_categories) | set(r.response_1_harm_categories)):
                by_category[category][0] += correct
                by_category[category][1] += 1
    report.accuracy = correct_total / len(pairs)
    if kind == "cost" and signs_n:
        report.accuracy_sign = signs_ok / signs_n
    report.per_category = {c: {"accuracy": ok / n, "pairs": n} for c, (ok, n) in sorted(by_category.items(), key=lambda kv: -kv[1][1])}
    return report


def _target(r: Record, kind: str) -> int | None:
    if isinstance(r, DualPreferencePair):
        return r.better_response_id if kind == "reward" else r.safer_response_id
    return 0  # single preferences: `chosen` (response 0 here) is the better / safer one


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def write_outputs(report: PreferenceReport, out_dir: str | Path) -> list[Path]:
    """metrics.json and a PNG histogram of scores of safe vs unsafe responses."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report.metrics(), indent=2))
    written = [out / "metrics.json"]
    if report.scores_safe or report.scores_unsafe:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(6, 3.8))
        bins = np.histogram_bin_edges(report.scores_safe + report.scores_unsafe, bins=30)
        ax.hist(report.scores_safe, bins=bins, alpha=0.6, color="#4f81bd", label=f"safe ({len(report.scores_safe)})")
        ax.hist(report.scores_unsafe, bins=bins, alpha=0.6, color="#c0504d", label=f"unsafe ({len(report.scores_unsafe)})")
        if report.kind == "cost":
            ax.axvline(0.0, color="black", linewidth=1, linestyle="--", label="cost = 0")
        ax.set_xlabel(f"{report.kind} score")
        ax.set_ylabel("responses")
        ax.set_title(f"{report.kind.capitalize()} scores of safe vs unsafe responses")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "score_histogram.png", dpi=110)
        plt.close(fig)
        written.append(out / "score_histogram.png")
    return written


def load_pairs(specs: list[str], format_name: str | None, skip_invalid: bool) -> list[Record]:
    """Records for evaluation (strict unless told otherwise)."""
    return load(specs, format_name, strict=not skip_invalid).records


@dataclass(kw_only=True)
class PreferenceEvalConfig:
    """`safealign eval preference`: how well a reward or cost model orders labelled pairs."""

    model: str
    """A reward or cost model folder (from `safealign train`)."""
    data: list[str]
    """Preference data: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION]; one entry per flag."""
    format: str | None = None
    """Source format (detected when not given)."""
    output_dir: str = "runs/eval-preference"
    """Folder for metrics.json and score_histogram.png."""
    max_length: int = 512
    """Tokens per sequence."""
    batch_size: int = 16
    """Sequences per forward pass."""
    skip_invalid: bool = False
    """Skip bad records instead of stopping."""

    def validate(self) -> None:
        """Check settings once, early."""
        at_least_one(self, "max_length", "batch_size")


def run_preference_eval(cfg: PreferenceEvalConfig) -> tuple[PreferenceReport, list[Path]]:
    """Evaluate and write the outputs; returns the report and the files written."""
    from safealign.models.score import ScoreModel, load_score_tokenizer

    if not (Path(cfg.model) / "score_config.json").is_file():
        raise FileNotFoundError(2, "not a safealign score-model folder (no score_config.json)", cfg.model)
    records = load_pairs(cfg.data, cfg.format, cfg.skip_invalid)
    scorer = ScoreModel.from_pretrained(cfg.model)
    report = evaluate_preference(scorer, load_score_tokenizer(cfg.model), records, cfg.max_length, cfg.batch_size)
    return report, write_outputs(report, cfg.output_dir)
