"""`safealign guard --policy DIR --moderator DIR --prompts PATH [--config FILE.yaml] [--field value ...]` (fields: `GuardConfig`)."""

from __future__ import annotations

from typing import Any

import typer

from safealign.cli.common import config_command, console, quiet_transformers


def guard(cfg: Any) -> None:
    """Generate, moderate and regenerate flagged answers; report flagged before and after."""
    from safealign.moderation.guard import run_guard

    quiet_transformers()
    done = run_guard(cfg)
    console.print(f"{done['prompts']} prompts: flagged before the guard {done['flagged_before']}, after {done['flagged_after']} "
                  f"({done['refused']} answered with the refusal); wrote {done['out']}")


def register(app: typer.Typer) -> None:
    """Add the command to the top-level app."""
    config_command(app, "guard", "safealign.moderation.guard:GuardConfig", guard,
                   "Generate, moderate and regenerate flagged answers; report flagged before and after.")
