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
