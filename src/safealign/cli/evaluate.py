"""`safealign eval preference --model DIR --data PATH...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from safealign.cli.common import console, user_errors

app = typer.Typer(no_args_is_help=True)


@app.command()
def preference(
    model: Annotated[Path, typer.Option("--model", help="A reward or cost model folder (from `safealign train`).")],
    data: Annotated[list[str], typer.Option("--data", help="Preference data: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION]; repeat for more.")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and score_histogram.png.")] = Path("runs/eval-preference"),
    max_length: Annotated[int, typer.Option(help="Tokens per sequence.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 16,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip bad records instead of stopping.")] = False,
) -> None:
    """Pairwise accuracy, sign accuracy (cost), per-harm-category accuracy and a score histogram."""
    from safealign.evaluate.preference import evaluate_preference, load_pairs, write_outputs
    from safealign.models.score import ScoreModel, load_score_tokenizer

    with user_errors():
        if not (model / "score_config.json").is_file():
            raise FileNotFoundError(2, "not a safealign score-model folder (no score_config.json)", str(model))
        records = load_pairs(data, format, skip_invalid)
        scorer = ScoreModel.from_pretrained(model)
        report = evaluate_preference(scorer, load_score_tokenizer(model), records, max_length, batch_size)
        written = write_outputs(report, out)
    table = Table(title=f"{report.kind} model on {report.pairs} pairs", show_header=False)
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


@app.command()
def moderation(
    model: Annotated[Path, typer.Option("--model", help="A moderation folder (from `safealign train moderation`).")],
    data: Annotated[list[str], typer.Option("--data", help="Labelled evaluation data (QA records or dual pairs); repeat for more.")],
    train_data: Annotated[Optional[list[str]], typer.Option("--train-data", help="Data for the TF-IDF baseline (default: the moderator's own training data from its run's config.yaml).")] = None,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and pr_curve.png.")] = Path("runs/eval-moderation"),
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Skip bad records instead of stopping.")] = False,
) -> None:
    """Unsafe P/R/F1, per-category and micro/macro F1, severity accuracy and confusion, ECE, PR curve — beside a TF-IDF baseline."""
    import yaml
    from transformers.utils import logging as hf_logging

    from safealign.data.load import load
    from safealign.moderation.evaluate import figures, score_baseline, score_moderator, write_pr_curve, write_report
    from safealign.moderation.model import Moderator
    from safealign.moderation.train import qa_records

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with user_errors():
        moderator = Moderator.load(model)
        records = qa_records(load(data, format, strict=not skip_invalid).records)
        if not train_data:
            run_config = model.parent / "config.yaml"
            if not run_config.is_file():
                raise FileNotFoundError(2, "no run config.yaml beside the model; pass --train-data for the baseline", str(run_config))
            train_data = yaml.safe_load(run_config.read_text())["data"]
        train_records = qa_records(load(train_data, format, strict=not skip_invalid).records)
    taxonomy = moderator.meta.taxonomy
    judges = [score_moderator(moderator, records), score_baseline(train_records, records, taxonomy)]
    results = {j.name: figures(j, records, taxonomy) for j in judges}
    table = Table(title=f"moderation on {len(records)} responses ({sum(not r.is_safe for r in records)} unsafe)")
    table.add_column("metric")
    for j in judges:
        table.add_column(j.name, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [("unsafe precision", lambda r: r["unsafe"]["precision"]), ("unsafe recall", lambda r: r["unsafe"]["recall"]),
            ("unsafe F1", lambda r: r["unsafe"]["f1"]), ("threshold", lambda r: r["threshold"]),
            ("category micro F1", lambda r: r["category_micro_f1"]), ("category macro F1", lambda r: r["category_macro_f1"]),
            ("severity accuracy", lambda r: r["severity_accuracy"]), ("ECE (unsafe)", lambda r: r["ece"])]
    for label, get in rows:
        table.add_row(label, *(fmt(get(results[j.name])) for j in judges))
    console.print(table)
    confusion = Table(title="severity confusion (model): rows true 0–3, columns predicted 0–3")
    for k in range(4):
        confusion.add_column(str(k), justify="right")
    for row in results["model"]["severity_confusion"]:
        confusion.add_row(*(str(v) for v in row))
    console.print(confusion)
    metrics_path = write_report(results, out)
    curve = write_pr_curve(judges, records, out / "pr_curve.png")
    console.print(f"wrote {metrics_path} and {curve}")
