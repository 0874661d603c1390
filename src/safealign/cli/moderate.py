"""`safealign moderate --model DIR --input PATH --output PATH [--config FILE.yaml] [--field value ...]` (fields: `ModerateConfig`)."""

from __future__ import annotations

from typing import Any

import typer

from safealign.cli.common import config_command, console, fail, quiet_transformers


def moderate(cfg: Any) -> None:
    """Judge every response: flagged, unsafe probability, harm categories and severity."""
    from safealign.moderation.judge import run_moderate

    quiet_transformers()
    try:
        done = run_moderate(cfg)
    except ValueError as exc:  # a record without a response
        raise fail(str(exc)) from None
    if done["rejects"]:
        console.print(f"wrote {done['rejected']} rejected line(s) with reasons to {done['rejects']}")
    console.print(f"read {done['read']} | kept {done['kept']} | rejected {done['rejected']} | "
                  f"verdicts {done['verdicts']} | flagged {done['flagged']} | wrote {done['output']}")


def register(app: typer.Typer) -> None:
    """Add the command to the top-level app."""
    config_command(app, "moderate", "safealign.moderation.judge:ModerateConfig", moderate,
                   "Judge every response: flagged, unsafe probability, harm categories and severity.")
