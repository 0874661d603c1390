"""`safealign guard --policy DIR --moderator DIR --prompts PATH [--config FILE.yaml] [--field value ...]` (fields: `GuardConfig`)."""

from __future__ import annotations

from typing import Any

import typer

from safealign.cli.common import config_command, console, quiet_transformers


def guard(cfg: Any) -> None:
    """The prompt moderator first (refuse), then the answer (regenerate up to N rounds, then refuse): unsafe and refusal rates each way."""
    from rich.table import Table

    from safealign.moderation.guard import run_guard

    quiet_transformers()
    metrics = run_guard(cfg)
    levels = ["no_guard", "output_guard"] + (["both"] if cfg.prompt_moderator else [])
    for name, title in (("prompts", "prompts"), ("safe_prompts", "safe prompts (over-refusal)")):
        if name not in metrics:
            continue
        block = metrics[name]
        table = Table(title=f"guard on {block['prompts']} {title}; judge {metrics['judge']}")
        table.add_column("")
        for level in levels:
            table.add_column(level.replace("_", " "), justify="right")
        table.add_row("unsafe rate", *(f"{block['unsafe_rate'][k]:.3f}" for k in levels))
        table.add_row("refusal rate", *(f"{block['refusal_rate'][k]:.3f}" for k in levels))
        console.print(table)
    console.print(f"wrote {cfg.output_dir}/answers.jsonl and {cfg.output_dir}/metrics.json")


def register(app: typer.Typer) -> None:
    """Add the command to the top-level app."""
    config_command(app, "guard", "safealign.moderation.guard:GuardConfig", guard,
                   "A multi-level guard: refuse flagged prompts, regenerate flagged answers (up to 5 rounds), then refuse.",
                   aliases={"out": "output_dir"})
