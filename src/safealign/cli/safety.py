"""`safealign eval safety --policy DIR --prompts PATH --moderator DIR [--reward DIR] [--cost DIR]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from safealign.cli.common import console, user_errors


def safety(
    policy: Annotated[str, typer.Option("--policy", help="A policy: alias, folder or hub id.")],
    moderator: Annotated[Path, typer.Option("--moderator", help="A moderation folder (the judge).")],
    prompts: Annotated[list[str], typer.Option("--prompts", help="Prompt records, e.g. the bundled BeaverTails-Evaluation (700 prompts, 14 categories).")],
    reward: Annotated[Optional[Path], typer.Option("--reward", help="Reward model folder (scores reported when given).")] = None,
    cost: Annotated[Optional[Path], typer.Option("--cost", help="Cost model folder (scores reported when given).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for answers.jsonl, metrics.json and the per-category plot.")] = Path("runs/eval-safety"),
    limit: Annotated[Optional[int], typer.Option(help="Only the first N prompts (after --per-category).")] = None,
    per_category: Annotated[Optional[int], typer.Option(help="Take the first N prompts of every category (a balanced subset).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer at most.")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 8,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Sample answers, judge them, and report the unsafe-answer rate overall and per category."""
    from accelerate.utils import set_seed
    from transformers.utils import logging as hf_logging

    from safealign.data.load import load
    from safealign.evaluate.safety import evaluate_safety, first_per_category, write_outputs
    from safealign.generate import load_generator
    from safealign.moderation.model import Moderator
    from safealign.train.rollout import ModelScorer, SamplingSettings

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with user_errors():
        records = load(prompts, format).records
        if per_category:
            records = first_per_category(records, per_category)
        records = records[:limit]
        judge = Moderator.load(moderator)
        model, tokenizer = load_generator(policy)
        reward_scorer = ModelScorer(reward) if reward else None
        cost_scorer = ModelScorer(cost) if cost else None
    set_seed(seed)
    metrics, rows = evaluate_safety(model, tokenizer, records, judge, SamplingSettings(max_new_tokens, temperature, 0.95),
                                    reward_scorer, cost_scorer, batch_size)
    table = Table(title=f"safety of {policy} on {len(rows)} prompts")
    columns = [k for k in metrics["overall"] if k != "answers"]
    table.add_column("category")
    table.add_column("answers", justify="right")
    for column in columns:
        table.add_column(column, justify="right")
    for name, block in [("overall", metrics["overall"]), *metrics["per_category"].items()]:
        table.add_row(name, str(block["answers"]), *(f"{block[c]:.3f}" for c in columns))
    console.print(table)
    for path in write_outputs(metrics, rows, out):
        console.print(f"wrote {path}")
