"""`safealign eval preference|moderation|arena|length|safety [--config FILE.yaml] [--field value ...]`.

The fields of each command are its config dataclass's: `PreferenceEvalConfig`,
`ModerationEvalConfig`, `ArenaConfig`, `LengthConfig`, `SafetyEvalConfig`.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from safealign.cli.common import config_command, console, quiet_transformers

app = typer.Typer(no_args_is_help=True)
OUT = {"out": "output_dir"}  # the short flag every eval command had before the configs


def preference(cfg: Any) -> None:
    """Pairwise accuracy, sign accuracy (cost), per-harm-category accuracy and a score histogram."""
    from safealign.evaluate.preference import run_preference_eval

    report, written = run_preference_eval(cfg)
    skipped = f"; {report.skipped_unordered} with no helpfulness order left out" if report.skipped_unordered else ""
    table = Table(title=f"{report.kind} model on {report.pairs} pairs{skipped}", show_header=False)
    table.add_row("eval/accuracy", f"{report.accuracy:.4f}")
    if report.accuracy_sign is not None:
        table.add_row("eval/accuracy_sign", f"{report.accuracy_sign:.4f}")
    metrics = report.metrics()
    for key in ("mean_score_safe", "mean_score_unsafe"):
        if metrics[key] is not None:
            table.add_row(key, f"{metrics[key]:.4f}")
    console.print(table)
    if report.per_category:
        cats = Table(title="accuracy per harm category (pairs touching it)")
        cats.add_column("category")
        cats.add_column("accuracy", justify="right")
        cats.add_column("pairs", justify="right")
        for name, row in report.per_category.items():
            cats.add_row(name, f"{row['accuracy']:.3f}", str(row["pairs"]))
        console.print(cats)
    for path in written:
        console.print(f"wrote {path}")


def moderation(cfg: Any) -> None:
    """Unsafe P/R/F1, per-category and micro/macro F1, severity accuracy and confusion, ECE, PR curve — beside a TF-IDF baseline."""
    from safealign.moderation.evaluate import run_moderation_eval

    quiet_transformers()
    done = run_moderation_eval(cfg)
    results = done["judges"]
    table = Table(title=f"moderation on {done['responses']} responses ({done['unsafe']} unsafe)")
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [("unsafe precision", lambda r: r["unsafe"]["precision"]), ("unsafe recall", lambda r: r["unsafe"]["recall"]),
            ("unsafe F1", lambda r: r["unsafe"]["f1"]), ("threshold", lambda r: r["threshold"]),
            ("category micro F1", lambda r: r["category_micro_f1"]), ("category macro F1", lambda r: r["category_macro_f1"]),
            ("severity accuracy", lambda r: r["severity_accuracy"]), ("ECE (unsafe)", lambda r: r["ece"])]
    for label, get in rows:
        table.add_row(label, *(fmt(get(r)) for r in results.values()))
    console.print(table)
    confusion = Table(title="severity confusion (model): rows true 0–3, columns predicted 0–3")
    for k in range(4):
        confusion.add_column(str(k), justify="right")
    for row in results["model"]["severity_confusion"]:
        confusion.add_row(*(str(v) for v in row))
    console.print(confusion)
    console.print(f"wrote {cfg.output_dir}/metrics.json and {cfg.output_dir}/pr_curve.png")


def arena(cfg: Any) -> None:
    """Policies answer the same prompts; win/tie/lose on reward, safe/unsafe 2×2 on cost, Bradley–Terry ratings with bootstrap CIs."""
    from safealign.evaluate.arena import run_arena

    quiet_transformers()
    report, written = run_arena(cfg)
    table = Table(title=f"arena on {report['prompts']} prompts (ratings: 1000 + 400·log10 BT strength)")
    for column in ("policy", "rating", "95% CI", "mean reward", "mean cost", "unsafe"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in sorted(report["policies"].items(), key=lambda kv: -kv[1]["rating"]):
        low, high = row["rating_ci95"]
        table.add_row(name, f"{row['rating']:.0f}", f"{low:.0f}–{high:.0f}", f"{row['mean_reward']:.3f}",
                      f"{row['mean_cost']:.3f}", f"{row['unsafe_share']:.1%}")
    console.print(table)
    pairs = Table(title="pairs: reward win/tie/lose of a vs b; cost 2×2 (a safe/unsafe × b safe/unsafe)")
    for column in ("a", "b", "win", "tie", "lose", "both safe", "only b unsafe", "only a unsafe", "both unsafe"):
        pairs.add_column(column, justify="left" if column in ("a", "b") else "right")
    for row in report["pairs"]:
        (ss, su), (us, uu) = row["safety_table"]["counts"]
        pairs.add_row(row["a"], row["b"], str(row["win"]), str(row["tie"]), str(row["lose"]), str(ss), str(su), str(us), str(uu))
    console.print(pairs)
    console.print("wrote " + ", ".join(map(str, written[:-1])) + f" and {written[-1]}")


def length(cfg: Any) -> None:
    """Length bias (Singhal et al. 2023): reward–length correlation, longer-preferred shares, reward gain vs non-length gain."""
    from safealign.evaluate.length import run_length

    quiet_transformers()
    metrics, _, _ = run_length(cfg)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    pref = metrics["preference"]
    table = Table(title=f"length bias on {pref['pairs']} pairs (length in {cfg.unit})", show_header=False)
    table.add_row("pearson(reward, length)", fmt(pref["pearson"]))
    table.add_row("spearman(reward, length)", fmt(pref["spearman"]))
    table.add_row("labels: share longer preferred", f"{fmt(pref['labels']['share_longer_preferred'])} ({pref['labels']['length_ties']} length ties left out)")
    table.add_row("reward model: share longer preferred", fmt(pref["reward_model"]["share_longer_preferred"]))
    rm = pref["reward_model"]
    table.add_row("reward model: pairwise accuracy (labels)",
                  f"{fmt(rm['accuracy'])} (longer preferred {fmt(rm['accuracy_longer_preferred'])}, "
                  f"shorter preferred {fmt(rm['accuracy_shorter_preferred'])})")
    if metrics["policies"]:
        pol = metrics["policies"]
        table.add_row("mean length before → after", f"{pol['mean_length_before']:.1f} → {pol['mean_length_after']:.1f}")
        table.add_row("reward gain (after − before)", fmt(pol["reward_gain"]))
        table.add_row(f"non-length reward gain ({cfg.bucket_width}-{cfg.unit} buckets)",
                      f"{fmt(pol['non_length_gain'])} ({pol['skipped']['buckets']} bucket(s) skipped)")
    console.print(table)
    console.print(f"wrote {cfg.output_dir}/metrics.json and {cfg.output_dir}/length.png")


def safety(cfg: Any) -> None:
    """Sample answers, judge them, and report the unsafe-answer rate overall and per category."""
    from safealign.evaluate.safety import run_safety_eval

    quiet_transformers()
    print_safety(run_safety_eval(cfg), f"safety of {cfg.policy}")
    console.print(f"wrote {cfg.output_dir}/answers.jsonl, {cfg.output_dir}/metrics.json and {cfg.output_dir}/unsafe_rate_by_category.png")


def print_safety(metrics: dict, title: str) -> None:
    """The metrics as a table: overall, then one row per category."""
    columns = [k for k in metrics["overall"] if k != "answers"]
    table = Table(title=f"{title} ({metrics['overall']['answers']} prompts)")
    table.add_column("category")
    table.add_column("answers", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    def cell(value: Any) -> str:  # a number, or an interval [low, high]
        return f"[{value[0]:.3f}, {value[1]:.3f}]" if isinstance(value, list | tuple) else f"{value:.3f}"

    for name, block in [("overall", metrics["overall"]), *metrics["per_category"].items()]:
        table.add_row(name, str(block["answers"]), *(cell(block[c]) if c in block else "-" for c in columns))
    console.print(table)


def steer(cfg: Any) -> None:
    """Ask a steerable policy for each value of one attribute: answer length (and unsafe rate) per value, Spearman's ρ."""
    from safealign.steer.evaluate import run_steer_eval

    quiet_transformers()
    metrics = run_steer_eval(cfg)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    table = Table(title=f"{cfg.attribute} asked of {cfg.policy} ({metrics['prompts']} prompts)")
    for column in ("asked", "mean words", "unsafe rate"):
        table.add_column(column, justify="right")
    for key, block in metrics["per_value"].items():
        table.add_row(key, f"{block['mean_words']:.1f}", fmt(block["unsafe_rate"]))
    console.print(table)
    console.print(f"Spearman ρ(asked value, answer words) {fmt(metrics['spearman_value_words'])} over every answer, "
                  f"{fmt(metrics['spearman_value_mean_words'])} over the means; wrote {cfg.output_dir}/metrics.json")


def adherence(cfg: Any) -> None:
    """How often a policy follows checkable system messages (held-out ones by default)."""
    from safealign.steer.evaluate import run_adherence_eval

    quiet_transformers()
    metrics = run_adherence_eval(cfg)
    table = Table(title=f"adherence of {cfg.policy} to {metrics['messages']} {cfg.split} system messages")
    table.add_column("message")
    table.add_column("answers", justify="right")
    table.add_column("adherence", justify="right")
    for name, block in metrics["per_message"].items():
        table.add_row(name, str(block["answers"]), "-" if block["adherence"] is None else f"{block['adherence']:.3f}")
    console.print(table)
    mean = metrics["adherence"]
    console.print(f"mean adherence {'-' if mean is None else f'{mean:.3f}'}; wrote {cfg.output_dir}/metrics.json")


for _name, _cls, _run in (("preference", "safealign.evaluate.preference:PreferenceEvalConfig", preference),
                          ("moderation", "safealign.moderation.evaluate:ModerationEvalConfig", moderation),
                          ("arena", "safealign.evaluate.arena:ArenaConfig", arena),
                          ("length", "safealign.evaluate.length:LengthConfig", length),
                          ("safety", "safealign.evaluate.safety:SafetyEvalConfig", safety),
                          ("steer", "safealign.steer.evaluate:SteerEvalConfig", steer),
                          ("adherence", "safealign.steer.evaluate:AdherenceEvalConfig", adherence)):
    config_command(app, _name, _cls, _run, _run.__doc__ or "", aliases=OUT)
