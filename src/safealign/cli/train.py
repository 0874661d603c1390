"""`safealign train reward | cost | attributes --config FILE.yaml [--field value ...]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from safealign.cli.common import fail, user_errors
from safealign.config import ConfigError, build_config

app = typer.Typer(no_args_is_help=True)
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config; --field value overrides follow.")]
_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _score(kind: str, config: Path | None, overrides: list[str]) -> None:
    from transformers.utils import logging as hf_logging

    from safealign.train.loop import TrainingError
    from safealign.train.score import ScoreTrainConfig, train_score_model

    # Load reports and shard progress bars drown the training output.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    try:
        cfg = build_config(ScoreTrainConfig, config, overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    with user_errors():
        try:
            metrics = train_score_model(cfg, kind)  # type: ignore[arg-type]
        except TrainingError as exc:
            raise fail(str(exc)) from None
    typer.echo(f"model saved to {Path(cfg.output_dir) / 'model'}")
    if metrics:
        typer.echo("final: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


@app.command(context_settings=_EXTRA)
def reward(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Train a reward model (helpfulness) with the Bradley–Terry loss."""
    _score("reward", config, ctx.args)


@app.command(context_settings=_EXTRA)
def cost(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Train a cost model (harmlessness) with the Safe RLHF cost loss."""
    _score("cost", config, ctx.args)


@app.command(context_settings=_EXTRA)
def attributes(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Train a HelpSteer multi-attribute regression model (five heads)."""
    _score("attributes", config, ctx.args)
