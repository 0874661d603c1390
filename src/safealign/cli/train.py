"""`safealign train reward|cost|attributes|moderation|sft|dpo|ppo|ppo-lag|ppo-shaping --config FILE.yaml [--field value ...]`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from safealign.cli.common import fail, user_errors
from safealign.config import ConfigError, build_config

app = typer.Typer(no_args_is_help=True)
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config; --field value overrides follow.")]
_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _run(config_cls: type, run: Callable[[Any], dict[str, float]], config: Path | None, overrides: list[str]) -> None:
    """Build the config (errors name the field), train, and say where the model went."""
    from transformers.utils import logging as hf_logging

    from safealign.train.loop import TrainingError

    # Load reports and shard progress bars drown the training output.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        cfg = build_config(config_cls, config, overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    with user_errors():
        try:
            metrics = run(cfg)
        except (TrainingError, ConfigError) as exc:
            raise fail(str(exc)) from None
    if cfg.dry_run:
        typer.echo("dry run: config checked, nothing trained")
        return
    typer.echo(f"model saved to {Path(cfg.output_dir) / 'model'}")
    if metrics:
        typer.echo("final: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))


def _score(kind: str) -> Callable[[typer.Context, Optional[Path]], None]:
    def command(ctx: typer.Context, config: ConfigOpt = None) -> None:
        from safealign.train.score import ScoreTrainConfig, train_score_model

        _run(ScoreTrainConfig, lambda cfg: train_score_model(cfg, kind), config, ctx.args)

    return command


def _ppo(algorithm: str) -> Callable[[typer.Context, Optional[Path]], None]:
    def command(ctx: typer.Context, config: ConfigOpt = None) -> None:
        from safealign.train.ppo import PPOConfig, train_ppo

        _run(PPOConfig, lambda cfg: train_ppo(cfg, algorithm), config, ctx.args)  # type: ignore[arg-type]

    return command


app.command("reward", context_settings=_EXTRA, help="Train a reward model (helpfulness) with the Bradley–Terry loss.")(_score("reward"))
app.command("cost", context_settings=_EXTRA, help="Train a cost model (harmlessness) with the Safe RLHF cost loss.")(_score("cost"))
app.command("attributes", context_settings=_EXTRA, help="Train a HelpSteer multi-attribute regression model (five heads).")(_score("attributes"))
app.command("ppo", context_settings=_EXTRA, help="PPO of a policy against a reward model (cost only logged).")(_ppo("ppo"))
app.command("ppo-lag", context_settings=_EXTRA, help="Safe RLHF: PPO-Lagrangian, max reward subject to mean cost ≤ d.")(_ppo("ppo-lag"))
app.command("ppo-shaping", context_settings=_EXTRA, help="PPO on reward − λ·cost with λ fixed.")(_ppo("ppo-shaping"))


@app.command(context_settings=_EXTRA)
def moderation(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Train a severity-sensitive moderator (unsafe, harm categories, severity) on QA records."""
    from safealign.moderation.train import ModerationConfig, train_moderator

    _run(ModerationConfig, train_moderator, config, ctx.args)


@app.command(context_settings=_EXTRA)
def sft(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Supervised fine-tuning of a policy on responses (prompt tokens masked out of the loss)."""
    from safealign.train.sft import SFTConfig, train_sft

    _run(SFTConfig, train_sft, config, ctx.args)


@app.command(context_settings=_EXTRA)
def dpo(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """DPO or SafeDPO (--loss safe-dpo) of a policy on preference pairs."""
    from safealign.train.dpo import DPOConfig, train_dpo

    _run(DPOConfig, train_dpo, config, ctx.args)
