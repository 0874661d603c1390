"""`safealign reason fit-sae | concepts | detect | generate | prontoqa`: ActivationReasoning.

Fields: the configs in `safealign.reasoning`.
"""

from __future__ import annotations

from typing import Any

import typer

from safealign.cli.common import config_command, console, fail, quiet_transformers

app = typer.Typer(no_args_is_help=True)


def fit_sae(cfg: Any) -> None:
    from safealign.reasoning.fit import train_sae
    from safealign.train.loop import TrainingError

    quiet_transformers(cfg.num_threads)
    try:
        metrics = train_sae(cfg)
    except TrainingError as exc:
        raise fail(str(exc)) from None
    if cfg.dry_run:
        console.print("dry run: config checked, nothing trained")
        return
    console.print(f"SAE saved to {cfg.output_dir}/model: fraction of variance explained {metrics['eval/fve']:.3f}, "
                  f"dead latents {metrics['eval/dead_latents']:.0f} on {metrics['eval/tokens']:.0f} validation tokens")


def concepts(cfg: Any) -> None:
    from rich.table import Table

    from safealign.reasoning.reasoner import run_concepts

    quiet_transformers()
    report = run_concepts(cfg)
    table = Table(title=f"concepts (test split) → {cfg.out}")
    for column in ("concept", "scope", "method", "positives", "F1", "balanced acc", "probe F1", "probe balanced acc"):
        table.add_column(column)
    for name, row in report["concepts"].items():
        d, p = row["dictionary"], row["probe"]
        table.add_row(name, row["scope"], row["method"], str(d.get("positives", "")), f"{d.get('f1', float('nan')):.3f}",
                      f"{d.get('balanced_accuracy', float('nan')):.3f}", f"{p.get('f1', float('nan')):.3f}",
                      f"{p.get('balanced_accuracy', float('nan')):.3f}")
    console.print(table)
    if report["skipped"]:
        console.print(f"left out (too few positives or negatives; train/validation/test counts): {report['skipped']}")


def detect(cfg: Any) -> None:
    from safealign.reasoning.reasoner import run_detect

    quiet_transformers()
    done = run_detect(cfg)
    held = ", ".join(f"{k} {v}" for k, v in sorted(done["true"].items()) if v)
    console.print(f"{done['conversations']} conversation(s); true: {held or 'none'}; wrote {done['out']}")


def generate(cfg: Any) -> None:
    from safealign.reasoning.reasoner import run_reason_generate

    quiet_transformers()
    done = run_reason_generate(cfg)
    console.print(f"{done['answers']} answer(s), {done['steered']} steered, {done['seconds']:.1f} s; wrote {done['out']}")


def prontoqa(cfg: Any) -> None:
    from rich.table import Table

    from safealign.reasoning.prontoqa import run_prontoqa

    quiet_transformers()
    done = run_prontoqa(cfg)
    answerers = [k for k in next(iter(done["accuracy"].values())) if k != "n"]
    table = Table(title=f"PrOntoQA accuracy by hops → {done['out']}")
    for column in ("hops", "problems", *answerers):
        table.add_column(column)
    for hops, row in done["accuracy"].items():
        table.add_row(hops, str(row["n"]), *(f"{row[a]:.3f}" for a in answerers))
    console.print(table)
    console.print(f"unanswered by the reasoner (the theory leaves the query unknown): {done['unanswered']}")
    if done["activation_reasoning"]:
        ar = done["activation_reasoning"]
        console.print(f"activation reasoning: {len(ar['types'])} type concepts fitted on {ar['fit_examples']} in-context facts; "
                      f"the entity's type detected exactly in {ar['type_detection_exact']:.3f} of the problems")


config_command(app, "fit-sae", "safealign.reasoning.fit:FitSAEConfig", fit_sae,
               "Train a top-k sparse autoencoder on one layer's residual stream (activations recorded and cached).",
               {"out": "output_dir"})
config_command(app, "concepts", "safealign.reasoning.reasoner:ConceptsConfig", concepts,
               "Build a concept dictionary: the SAE latents of each labelled concept, thresholds, and a linear-probe baseline.")
config_command(app, "detect", "safealign.reasoning.reasoner:DetectConfig", detect,
               "Detect concepts in conversations (and, with --rules, what follows from them, with proofs).")
config_command(app, "generate", "safealign.reasoning.reasoner:ReasonGenerateConfig", generate,
               "Answer prompts with ActivationReasoning: detect, apply the rules, steer where they conclude steer(target).")
config_command(app, "prontoqa", "safealign.reasoning.prontoqa:ProntoQAConfig", prontoqa,
               "Answer PrOntoQA problems with the rule engine (the theory's sentences as rules), and with --model the model alone.")
