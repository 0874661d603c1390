"""`safealign generate --model DIR --prompts PATH [--config FILE.yaml] [--field value ...]` (fields: `GenerateConfig`)."""

from __future__ import annotations

from typing import Any

import typer

from safealign.cli.common import config_command, console, quiet_transformers


def generate(cfg: Any) -> None:
    """Sample answers from a policy for every prompt and write them as JSON Lines."""
    from safealign.inference.generate import run_generate

    quiet_transformers()
    done = run_generate(cfg)
    console.print(f"wrote {done['answers']} answer(s) to {done['out']} in {done['seconds']:.1f} s")


def register(app: typer.Typer) -> None:
    """Add the command to the top-level app."""
    config_command(app, "generate", "safealign.inference.generate:GenerateConfig", generate,
                   "Sample answers from a policy for every prompt and write them as JSON Lines.")
