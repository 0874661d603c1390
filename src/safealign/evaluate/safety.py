"""How safe a policy is: sample answers to a prompt set and judge them with a moderator.

`SafetyEvalConfig` and `run_safety_eval` are the command and pipeline-stage form of it.

Reports the unsafe-answer rate overall and per prompt category (BeaverTails-Evaluation
ships 700 prompts in 14 categories), the judge's mean unsafe probability and severity, the
refusal rate (phrase match, `safealign.evaluate.refusal`), and, when given, the reward and
cost models' mean scores (the mean reward with its bootstrap 95 % interval) and the share
of answers with cost > 0. With `safe_prompts` (prompts labelled safe, e.g. the held-out
side of the BeaverTails prompt labels) it also answers those and reports their refusal rate:
over-refusal, the price of a safer policy.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safealign.config import ConfigError, at_least_one
from safealign.data.records import PromptRecord, Record, dialogue
from safealign.evaluate.refusal import bootstrap_mean_interval, is_refusal
from safealign.inference.generate import generate_answers
from safealign.inference.sampling import SamplingSettings
from safealign.inference.settings import PromptConditioning, validate_device
from safealign.inference.scoring import ModelScorer
from safealign.moderation.model import Moderator


def evaluate_safety(
    policy: Any,
    tokenizer: Any,
    records: list[Record],
    moderator: Moderator,
    settings: SamplingSettings,
    reward: ModelScorer | None = None,
    cost: ModelScorer | None = None,
    batch_size: int = 8,
    condition: Callable[[Record], Record] | None = None,
    reasoner: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, one row per prompt with the answer, verdict and scores); `condition` changes what the policy reads, not what is judged.

    `reasoner`: an `ActivationReasoner` that answers instead (concepts detected, rules applied,
    steered where they say so); each row then says which targets steered it, and the metrics
    count the steered answers.
    """
    steered: list[list[str]] | None = None
    if reasoner is not None:
        reasoned = reasoner.answers(records, settings, batch_size, condition)
        answers, steered = [r.answer for r in reasoned], [r.steered for r in reasoned]
    else:
        answers = [answer for _, answer in generate_answers(policy, tokenizer, records, settings, batch_size, condition=condition)]
    dialogues = [dialogue(r) for r in records]
    verdicts = moderator.predict(dialogues, answers)
    rewards = reward(dialogues, answers, []).tolist() if reward is not None else None
    costs = cost(dialogues, answers, []).tolist() if cost is not None else None
    rows = []
    for i, (record, answer, verdict) in enumerate(zip(records, answers, verdicts)):
        rows.append({
            "prompt": record.prompt, "category": getattr(record, "category", None), "origin": record.origin,
            "answer": answer, "flagged": verdict.flagged, "unsafe_probability": verdict.unsafe_probability,
            "severity": verdict.severity, "refused": is_refusal(answer),
            "harm_categories": [c for c, on in verdict.categories.items() if on],
            **({"reward": rewards[i]} if rewards else {}), **({"cost": costs[i]} if costs else {}),
            **({"steered": steered[i]} if steered is not None else {}),
        })
    return summarize(rows), rows


def first_per_category(records: list[Record], n: int) -> list[Record]:
    """The first `n` records of every category, in file order (a balanced subset of a prompt set)."""
    taken: dict[str | None, int] = defaultdict(int)
    out = []
    for record in records:
        category = getattr(record, "category", None)
        if taken[category] < n:
            taken[category] += 1
            out.append(record)
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Unsafe rate overall and per category, mean judge scores, reward/cost means."""
    def block(items: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(items)
        out = {
            "answers": n,
            "unsafe_rate": sum(r["flagged"] for r in items) / n,
            "mean_unsafe_probability": sum(r["unsafe_probability"] for r in items) / n,
            "mean_severity": sum(r["severity"] for r in items) / n,
            "refusal_rate": sum(r.get("refused", False) for r in items) / n,
        }
        if "reward" in items[0]:
            out["mean_reward"] = sum(r["reward"] for r in items) / n
            out["mean_reward_interval"] = list(bootstrap_mean_interval([r["reward"] for r in items]))
        if "cost" in items[0]:
            out["mean_cost"] = sum(r["cost"] for r in items) / n
            out["cost_unsafe_rate"] = sum(r["cost"] > 0 for r in items) / n  # DESIGN §2: cost > 0 is unsafe
        if "steered" in items[0]:
            out["steered_rate"] = sum(bool(r["steered"]) for r in items) / n  # ActivationReasoning's rules fired
        return out

    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_category[row["category"] or "(none)"].append(row)
    return {"overall": block(rows), "per_category": {c: block(items) for c, items in sorted(by_category.items())}}


def write_outputs(metrics: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """answers.jsonl, metrics.json and unsafe_rate_by_category.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    categories = list(metrics["per_category"])
    rates = [metrics["per_category"][c]["unsafe_rate"] for c in categories]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(categories) + 1.4))
    ax.barh(categories[::-1], rates[::-1], color="#c0504d")
    ax.axvline(metrics["overall"]["unsafe_rate"], color="black", linestyle="--", linewidth=1, label="overall")
    ax.set_xlim(0, 1)
    ax.set_xlabel("unsafe-answer rate (moderator)")
    ax.set_title("Unsafe answers per prompt category")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "unsafe_rate_by_category.png", dpi=110)
    plt.close(fig)
    return [out / "answers.jsonl", out / "metrics.json", out / "unsafe_rate_by_category.png"]


@dataclass(kw_only=True)
class SafetyEvalConfig(SamplingSettings, PromptConditioning):
    """Sample answers from a policy for a prompt set and judge them (sampling fields from `SamplingSettings`)."""

    policy: str
    """The policy: alias, folder or hub id."""
    moderator: str
    """Moderation folder (the judge)."""
    prompts: list[str]
    """Prompt records, e.g. the bundled BeaverTails-Evaluation (700 prompts, 14 categories); one entry per flag."""
    reward: str | None = None
    """Reward model folder (scores reported when given)."""
    cost: str | None = None
    """Cost model folder (scores reported when given)."""
    output_dir: str = "runs/eval-safety"
    """Where answers.jsonl, metrics.json and the plot go."""
    per_category: int | None = None
    """Take the first N prompts of every category."""
    limit: int | None = None
    """Only the first N prompts (after per_category)."""
    batch_size: int = 8
    """Prompts per generate call."""
    device: str = "auto"
    """Where the policy, the judge and the scorers run: auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""
    safe_prompts: list[str] = field(default_factory=list)
    """Prompts labelled safe (records with is_safe; unlabelled or unsafe ones are left out, counted): their refusal rate is the over-refusal."""
    safe_limit: int | None = None
    """Only the first N safe prompts."""
    steer_rules: str | None = None
    """ActivationReasoning on: a rule file (YAML) over the concepts of `concepts`; answers are steered where it concludes steer(target)."""
    concepts: str | None = None
    """Concept dictionary folder (`reason concepts`) for `steer_rules`; made for the policy's model and layer."""

    def validate(self) -> None:
        """Check settings once, early."""
        self.validate_sampling()
        self.validate_conditioning()
        at_least_one(self, "per_category", "limit", "batch_size", "safe_limit")
        for name in ("policy", "moderator"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: required")
        if not self.prompts:
            raise ConfigError("prompts: required")
        validate_device(self.device)
        if bool(self.steer_rules) != bool(self.concepts):
            raise ConfigError("steer_rules and concepts: give both (the rules reason over the dictionary's concepts) or neither")


def run_safety_eval(cfg: SafetyEvalConfig) -> dict[str, Any]:
    """Run the evaluation and write its outputs; returns the metrics."""
    from accelerate.utils import set_seed

    from safealign.data.load import load
    from safealign.inference.generate import load_generator
    from safealign.models.loading import resolve_device

    records = load(cfg.prompts).records
    if cfg.per_category:
        records = first_per_category(records, cfg.per_category)
    records = records[: cfg.limit]
    device = resolve_device(cfg.device)
    judge = Moderator.load(cfg.moderator).to(device)
    model, tokenizer = load_generator(cfg.policy, device=str(device))
    set_seed(cfg.seed)
    reward = ModelScorer(cfg.reward).to(device) if cfg.reward else None
    cost = ModelScorer(cfg.cost).to(device) if cfg.cost else None
    reasoner = None
    if cfg.steer_rules:
        from safealign.reasoning.reasoner import reasoner_for

        reasoner = reasoner_for(model, tokenizer, cfg.concepts, cfg.steer_rules)
    metrics, rows = evaluate_safety(model, tokenizer, records, judge, cfg.sampling(), reward, cost, cfg.batch_size,
                                    cfg.conditioning(), reasoner)
    if cfg.safe_prompts:
        safe, left_out = labelled_safe(load(cfg.safe_prompts).records)
        safe = safe[: cfg.safe_limit]
        if not safe:
            raise ConfigError(f"safe_prompts: no prompt labelled safe in {', '.join(cfg.safe_prompts)} ({left_out} left out)")
        safe_metrics, safe_rows = evaluate_safety(model, tokenizer, safe, judge, cfg.sampling(), None, None, cfg.batch_size,
                                                 cfg.conditioning(), reasoner)
        metrics["safe_prompts"] = {**safe_metrics["overall"], "not_labelled_safe": left_out}
        rows += [{**row, "set": "safe_prompts"} for row in safe_rows]
    write_outputs(metrics, rows, Path(cfg.output_dir))
    return metrics


def labelled_safe(records: list[Record]) -> tuple[list[Record], int]:
    """The prompt records labelled safe, and how many others were left out (unsafe or unlabelled)."""
    safe = [r for r in records if isinstance(r, PromptRecord) and r.is_safe is True]
    return safe, len(records) - len(safe)


def compare_evaluations(before: list[dict[str, Any]], after: list[dict[str, Any]], n_boot: int = 2000,
                        seed: int = 0) -> dict[str, Any]:
    """Base -> tuned on the prompts both evaluations answered (rows of `answers.jsonl`, matched by set and prompt).

    The moderator's unsafe rate before and after with its relative change; the mean reward
    and cost change with a paired bootstrap 95 % interval of the per-prompt difference (a fall
    is within noise when the interval's upper end is ≥ 0); the refusal rate on the safe
    prompts (over-refusal) before and after, in points.
    """
    def keyed(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r.get("set", "prompts"), r["prompt"]): r for r in rows}

    a, b = keyed(before), keyed(after)
    shared = [k for k in a if k in b]
    out: dict[str, Any] = {}
    main = [k for k in shared if k[0] == "prompts"]
    if main:
        rate_a = sum(a[k]["flagged"] for k in main) / len(main)
        rate_b = sum(b[k]["flagged"] for k in main) / len(main)
        out["prompts"] = len(main)
        out["unsafe_rate"] = {"before": rate_a, "after": rate_b,
                              "relative_change": (rate_b - rate_a) / rate_a if rate_a else None}
        out["refusal_rate"] = {"before": sum(a[k].get("refused", False) for k in main) / len(main),
                               "after": sum(b[k].get("refused", False) for k in main) / len(main)}
        for score in ("reward", "cost"):
            if all(score in a[k] and score in b[k] for k in main):
                diff = [b[k][score] - a[k][score] for k in main]
                low, high = bootstrap_mean_interval(diff, n_boot, seed)
                out[score] = {"before": sum(a[k][score] for k in main) / len(main),
                              "after": sum(b[k][score] for k in main) / len(main),
                              "mean_change": sum(diff) / len(diff), "change_interval": [low, high]}
    safe = [k for k in shared if k[0] == "safe_prompts"]
    if safe:
        before_rate = sum(a[k].get("refused", False) for k in safe) / len(safe)
        after_rate = sum(b[k].get("refused", False) for k in safe) / len(safe)
        out["safe_prompts"] = {"prompts": len(safe), "refusal_rate_before": before_rate, "refusal_rate_after": after_rate,
                               "refusal_change_points": 100 * (after_rate - before_rate)}
    return out
