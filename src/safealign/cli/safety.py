"""`safealign eval safety --policy DIR --prompts PATH --moderator DIR [--reward DIR] [--cost DIR]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from safealign.cli.common import console, user_errors
from safealign.inference.settings import DEFAULT_SAMPLING


def safety(
    policy: Annotated[str, typer.Option("--policy", help="A policy: alias, folder or hub id.")],
    moderator: Annotated[Path, typer.Option("--moderator", help="A moderation folder (the judge).")],
    prompts: Annotated[list[str], typer.Option("--prompts", help="Prompt records, e.g. the bundled BeaverTails-Evaluation (700 prompts, 14 categories).")],
    reward: Annotated[Optional[Path], typer.Option("--reward", help="Reward model folder (scores reported when given).")] = None,
    cost: Annotated[Optional[Path], typer.Option("--cost", help="Cost model folder (scores reported when given).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for answers.jsonl, metrics.json and the per-category plot.")] = Path("runs/eval-safety"),
    limit: Annotated[Optional[int], typer.Option(help="Only the first N prompts (after --per-category).")] = None,
    per_category: Annotated[Optional[int], typer.Option(help="Take the first N prompts of every category (a balanced subset).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer at most.")] = DEFAULT_SAMPLING.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = DEFAULT_SAMPLING.temperature,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 8,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = DEFAULT_SAMPLING.seed,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda, cuda:N or mps.")] = "auto",
) -> None:
    """Sample answers, judge them, and report the unsafe-answer rate overall and per category."""
    from transformers.utils import logging as hf_logging

    from safealign.evaluate.safety import SafetyEvalConfig, run_safety_eval

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cfg = SafetyEvalConfig(policy=policy, moderator=str(moderator), prompts=prompts, reward=str(reward) if reward else None,
                           cost=str(cost) if cost else None, output_dir=str(out), per_category=per_category, limit=limit,
                           max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size, seed=seed,
                           device=device)
    with user_errors():
        cfg.validate()
        metrics = run_safety_eval(cfg)
    print_safety(metrics, f"safety of {policy}")
    console.print(f"wrote {out / 'answers.jsonl'}, {out / 'metrics.json'} and {out / 'unsafe_rate_by_category.png'}")


def print_safety(metrics: dict, title: str) -> None:
    """The metrics as a table: overall, then one row per category."""
    columns = [k for k in metrics["overall"] if k != "answers"]
    table = Table(title=f"{title} ({metrics['overall']['answers']} prompts)")
    table.add_column("category")
    table.add_column("answers", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    for name, block in [("overall", metrics["overall"]), *metrics["per_category"].items()]:
        table.add_row(name, str(block["answers"]), *(f"{block[c]:.3f}" for c in columns))
    console.print(table)
