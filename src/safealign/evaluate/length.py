"""Length bias of a reward model, its preference data and a policy's reward gain.

After Singhal et al. (2023), "A Long Way to Go: Investigating Length Correlations in RLHF":
- on preference pairs: Pearson and Spearman correlation of reward with response length over
  every scored response, and how often the labelled preference (better_response_id for dual
  pairs, `chosen` for single ones) and the reward model pick the longer response;
- for a policy before and after training: the total reward gain next to the non-length
  reward gain (NRG), the part of the gain that remains within length buckets.

Length is counted in tokens of the reward model's tokenizer on the response text alone (no
prompt, no special tokens), or in whitespace-separated words with unit="words".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from safealign.config import ConfigError, at_least_one
from safealign.data.errors import DataError
from safealign.inference.settings import SamplingSettings, validate_device
from safealign.data.records import DualPreferencePair, PreferencePair, Record, dialogue

UNITS = {"tokens": "tokens of the reward model's tokenizer (response text only, no special tokens)",
         "words": "whitespace-separated words of the response"}


def response_length(tokenizer: Any, text: str, unit: str = "tokens") -> int:
    """Length of a response in `unit` ("tokens" or "words")."""
    if unit == "words":
        return len(text.split())
    if unit == "tokens":
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    raise ValueError(f"unknown length unit {unit!r}; use one of {sorted(UNITS)}")


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """r = Σ(x − x̄)(y − ȳ) / √(Σ(x − x̄)² · Σ(y − ȳ)²); None when either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx**2).sum() * (dy**2).sum())
    return float((dx * dy).sum() / denom) if len(x) > 1 and denom > 0 else None


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """ρ = Pearson correlation of the average ranks (the tie-corrected Spearman coefficient)."""
    return pearson(average_ranks(x), average_ranks(y))


def longer_preferred(pairs: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """Share of pairs whose preferred response is the longer one.

    pairs: (length of the preferred response, length of the other). Pairs of equal length say
    nothing about length and are left out of the share, but counted:
    share = longer / (longer + shorter).
    """
    longer = shorter = ties = 0
    for preferred, other in pairs:
        if preferred == other:
            ties += 1
        elif preferred > other:
            longer += 1
        else:
            shorter += 1
    decided = longer + shorter
    return {"pairs": longer + shorter + ties, "longer_preferred": longer, "shorter_preferred": shorter,
            "length_ties": ties, "share_longer_preferred": longer / decided if decided else None}


def pair_length_bias(lengths: Sequence[int], rewards: Sequence[float], preferred: Sequence[bool | None]) -> dict[str, Any]:
    """Length bias of scored pairs: responses 2k and 2k + 1 form pair k; preferred[i] says whether response i is the labelled one (None: no order).

    Correlations over every response; longer-preferred shares of the labels and of the model;
    the model's pairwise accuracy against the labels overall and split by whether the
    labelled answer is the longer or the shorter one (a length-driven model is right on the
    first and wrong on the second).
    """
    label_pairs, model_pairs, reward_ties = [], [], 0
    right: dict[str, list[bool]] = {"all": [], "longer": [], "shorter": []}  # the model agrees with the label, by which is longer
    for k in range(0, len(lengths), 2):
        if preferred[k] is not None:  # a pair with no helpfulness order has no labelled preference to compare
            best = k if preferred[k] else k + 1
            other = 2 * k + 1 - best
            label_pairs.append((lengths[best], lengths[other]))
            agrees = rewards[best] > rewards[other]
            right["all"].append(agrees)
            if lengths[best] != lengths[other]:
                right["longer" if lengths[best] > lengths[other] else "shorter"].append(agrees)
        if rewards[k] == rewards[k + 1]:
            reward_ties += 1  # the reward model prefers neither
            continue
        top = k if rewards[k] > rewards[k + 1] else k + 1
        model_pairs.append((lengths[top], lengths[2 * k + 1 - top]))
    accuracy = {("accuracy" if part == "all" else f"accuracy_{part}_preferred"): _share(values) for part, values in right.items()}
    return {"responses": len(lengths), "mean_length": float(np.mean(lengths)),
            "pearson": pearson(lengths, rewards), "spearman": spearman(lengths, rewards),
            "labels": longer_preferred(label_pairs),
            "reward_model": {**longer_preferred(model_pairs), "reward_ties": reward_ties, **accuracy}}


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def non_length_gain(lengths_before: Sequence[int], rewards_before: Sequence[float],
                    lengths_after: Sequence[int], rewards_after: Sequence[float], width: int = 20) -> dict[str, Any]:
    """Total reward gain and the non-length reward gain of a policy update.

    Δ = mean(r_after) − mean(r_before) over all responses. Responses fall in buckets
    b = ⌊length / width⌋ ([0, 20), [20, 40), ... tokens by default); then

        NRG = Σ_b n_b (r̄_after,b − r̄_before,b) / Σ_b n_b,   n_b = n_before,b + n_after,b,

    over the buckets where *both* policies have responses; the others cannot be compared
    within a length and are skipped and reported. NRG ≈ Δ says the gain is not a length
    effect; NRG ≈ 0 says the gain is explained by the shift in length.
    """
    if not rewards_before or not rewards_after:
        raise ValueError("both policies need responses")
    sides: dict[int, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for side, (lengths, rewards) in enumerate(((lengths_before, rewards_before), (lengths_after, rewards_after))):
        for length, reward in zip(lengths, rewards, strict=True):
            sides[int(length) // width][side].append(float(reward))
    buckets, weighted, weight = [], 0.0, 0
    skipped = {"buckets": 0, "before": 0, "after": 0}
    for b in sorted(sides):
        before, after = sides[b]
        used = bool(before and after)
        row = {"lengths": [b * width, (b + 1) * width], "before": len(before), "after": len(after),
               "mean_before": float(np.mean(before)) if before else None,
               "mean_after": float(np.mean(after)) if after else None, "used": used}
        buckets.append(row)
        if used:
            n = len(before) + len(after)
            weighted += n * (row["mean_after"] - row["mean_before"])
            weight += n
        else:
            skipped["buckets"] += 1
            skipped["before"] += len(before)
            skipped["after"] += len(after)
    gain = float(np.mean(rewards_after) - np.mean(rewards_before))
    nrg = weighted / weight if weight else None
    return {"reward_gain": gain, "non_length_gain": nrg,
            "non_length_share": nrg / gain if nrg is not None and gain != 0 else None,
            "bucket_width": width, "weights": "n_before + n_after per bucket; buckets missing either policy skipped",
            "skipped": skipped, "buckets": buckets}


def preference_bias(model: Any, tokenizer: Any, records: list[Record], unit: str = "tokens",
                    max_length: int = 512, batch_size: int = 16) -> tuple[dict[str, Any], dict[str, list]]:
    """Length figures of preference pairs under a reward model, and the raw points for plots.

    Returns (metrics, points) with points = {"length", "reward", "preferred"} per response.
    """
    from safealign.inference.scoring import score_texts
    from safealign.models.template import encode_dialogue

    pairs = [r for r in records if isinstance(r, (DualPreferencePair, PreferencePair))]
    if not pairs:
        raise DataError("no preference pairs in --data")
    texts, preferred, sequences = [], [], []
    for r in pairs:
        both = (r.response_0, r.response_1) if isinstance(r, DualPreferencePair) else (r.chosen, r.rejected)
        best = r.better_response_id if isinstance(r, DualPreferencePair) else 0
        for i, text in enumerate(both):
            texts.append(text)
            preferred.append(None if best is None else i == best)
            sequences.append(encode_dialogue(tokenizer, dialogue(r), text, max_length))
    rewards = score_texts(model, sequences, tokenizer.pad_token_id, batch_size)
    lengths = [response_length(tokenizer, t, unit) for t in texts]
    metrics = {"pairs": len(pairs), **pair_length_bias(lengths, rewards, preferred)}
    return metrics, {"length": lengths, "reward": rewards, "preferred": preferred}


def policy_bias(lengths_before: list[int], rewards_before: list[float], lengths_after: list[int],
                rewards_after: list[float], width: int) -> dict[str, Any]:
    """Mean length and reward of both policies, the length correlation of their rewards, Δ and NRG."""
    lengths, rewards = lengths_before + lengths_after, rewards_before + rewards_after
    return {"prompts": len(rewards_before),
            "mean_length_before": float(np.mean(lengths_before)), "mean_length_after": float(np.mean(lengths_after)),
            "mean_reward_before": float(np.mean(rewards_before)), "mean_reward_after": float(np.mean(rewards_after)),
            "pearson": pearson(lengths, rewards), "spearman": spearman(lengths, rewards),
            **non_length_gain(lengths_before, rewards_before, lengths_after, rewards_after, width)}


def write_length_figure(points: dict[str, list], policies: dict[str, list] | None, unit: str, path: Any,
                        buckets: list[dict[str, Any]] | None = None) -> None:
    """Reward vs length: preference responses (preferred / other), and before / after answers with bucket means when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if policies else 1, figsize=(11 if policies else 6, 4), squeeze=False)
    ax = axes[0][0]
    length, reward = np.asarray(points["length"]), np.asarray(points["reward"])
    preferred = np.array([p is True for p in points["preferred"]], dtype=bool)
    other = np.array([p is False for p in points["preferred"]], dtype=bool)
    ax.scatter(length[preferred], reward[preferred], s=12, alpha=0.7, color="#4f81bd", label="preferred")
    ax.scatter(length[other], reward[other], s=12, alpha=0.7, color="#c0504d", label="other")
    unordered = ~(preferred | other)  # pairs with no helpfulness order
    if unordered.any():
        ax.scatter(length[unordered], reward[unordered], s=12, alpha=0.5, color="#9b9b9b", label="no order")
    if len(set(length.tolist())) > 1:
        slope, intercept = np.polyfit(length, reward, 1)  # least-squares line, for the eye only
        grid = np.array([length.min(), length.max()])
        ax.plot(grid, slope * grid + intercept, color="black", linewidth=1)
    ax.set_xlabel(f"response length ({unit})")
    ax.set_ylabel("reward")
    ax.set_title(f"Preference data: reward vs length (Pearson {_fmt(pearson(length, reward))})")
    ax.legend()
    if policies:
        ax = axes[0][1]
        for side, color in (("before", "#9b9b9b"), ("after", "#2e8b57")):
            ax.scatter(policies[f"length_{side}"], policies[f"reward_{side}"], s=12, alpha=0.7, color=color, label=side)
        for bucket in buckets or []:  # bucket edges and per-bucket means: what NRG compares
            ax.axvline(bucket["lengths"][0], color="#dddddd", linewidth=0.8, zorder=0)
            for side, color in (("before", "#555555"), ("after", "#1b5e20")):
                if bucket[f"mean_{side}"] is not None:
                    ax.hlines(bucket[f"mean_{side}"], *bucket["lengths"], color=color, linewidth=2)
        ax.set_xlabel(f"answer length ({unit})")
        ax.set_ylabel("reward")
        ax.set_title("Policy answers before / after (lines: bucket means)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


@dataclass(kw_only=True)
class LengthConfig(SamplingSettings):
    """`safealign eval length`: length bias of a reward model on pairs, and of a policy's gain (sampling fields from `SamplingSettings`)."""

    reward: str
    """Reward model folder."""
    data: list[str]
    """Preference pairs: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION]; one entry per flag."""
    before: str | None = None
    """Policy before training (with after and prompts)."""
    after: str | None = None
    """Policy after training."""
    prompts: list[str] = field(default_factory=list)
    """Prompts both policies answer."""
    format: str | None = None
    """Source format (detected when not given)."""
    limit: int | None = None
    """Only the first N prompts."""
    unit: Literal["tokens", "words"] = "tokens"
    """Length unit: tokens (of the reward model's tokenizer) or words."""
    bucket_width: int = 20
    """Length bucket width for the non-length reward gain."""
    output_dir: str = "runs/eval-length"
    """Folder for metrics.json and length.png."""
    batch_size: int = 8
    """Prompts per generate call and sequences per scoring pass."""
    max_length: int = 512
    """Tokens per scored sequence."""
    skip_invalid: bool = False
    """Skip bad records instead of stopping."""
    threads: int | None = None
    """torch CPU threads (default: torch's own choice)."""
    device: str = "auto"
    """auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        """Check settings once, early."""
        self.validate_sampling()
        at_least_one(self, "limit", "bucket_width", "batch_size", "max_length", "threads")
        validate_device(self.device)
        if (self.before is None) != (self.after is None) or (self.before is not None and not self.prompts):
            raise ConfigError("before, after, prompts: go together")


def run_length(cfg: LengthConfig) -> tuple[dict[str, Any], dict[str, list], dict[str, list] | None]:
    """Measure and write metrics.json and length.png; returns (metrics, preference points, policy answers)."""
    import json
    from pathlib import Path

    from safealign.data.load import load
    from safealign.evaluate.arena import answer_prompts, load_scorer, score_answers

    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    model, tokenizer = load_scorer(cfg.reward, "reward", cfg.device)
    pairs = load(cfg.data, cfg.format, strict=not cfg.skip_invalid).records
    metrics: dict[str, Any] = {"unit": UNITS[cfg.unit], "reward": cfg.reward, "preference": None, "policies": None}
    metrics["preference"], points = preference_bias(model, tokenizer, pairs, cfg.unit, cfg.max_length, cfg.batch_size)
    answers = None
    if cfg.before is not None and cfg.after is not None:
        records = load(cfg.prompts, cfg.format).records[: cfg.limit]
        if not records:
            raise DataError("no prompts to answer")
        texts = [answer_prompts(p, records, cfg.sampling(), cfg.batch_size, cfg.seed, cfg.device) for p in (cfg.before, cfg.after)]
        scores = score_answers(model, tokenizer, records, texts, cfg.max_length, cfg.batch_size)
        answers = {f"length_{side}": [response_length(tokenizer, t, cfg.unit) for t in texts[k]] for k, side in enumerate(("before", "after"))}
        answers.update(reward_before=scores[:, 0].tolist(), reward_after=scores[:, 1].tolist())
        metrics["policies"] = {"before": cfg.before, "after": cfg.after, **policy_bias(
            answers["length_before"], answers["reward_before"], answers["length_after"], answers["reward_after"], cfg.bucket_width)}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_length_figure(points, answers, cfg.unit, out / "length.png", (metrics["policies"] or {}).get("buckets"))
    return metrics, points, answers
