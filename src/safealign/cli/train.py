"""`safealign train reward|cost|attributes|moderation|sft|dpo|ppo|ppo-lag|ppo-shaping [--config FILE.yaml] [--field value ...]`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from safealign.cli.common import config_command, fail, quiet_transformers

app = typer.Typer(no_args_is_help=True)


def _trainer(module: str, function: str, *args: str) -> Callable[[Any], None]:
    """Train with `module.function(cfg, *args)` and say where the model went."""

    def run(cfg: Any) -> None:
        import importlib

        from safealign.train.loop import TrainingError

        quiet_transformers()
        try:
            metrics = getattr(importlib.import_module(module), function)(cfg, *args)
        except TrainingError as exc:
            raise fail(str(exc)) from None
        if cfg.dry_run:
            typer.echo("dry run: config checked, nothing trained")
            return
        typer.echo(f"model saved to {Path(cfg.output_dir) / 'model'}")
        if metrics:
            typer.echo("final: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))

    return run


_SCORE = ("safealign.train.score:ScoreTrainConfig", "safealign.train.score", "train_score_model")
_PPO = ("safealign.train.ppo:PPOConfig", "safealign.train.ppo", "train_ppo")
for _name, (_cls, _module, _function), _args, _help in (
    ("reward", _SCORE, ("reward",), "Train a reward model (helpfulness) with the Bradley–Terry loss."),
    ("cost", _SCORE, ("cost",), "Train a cost model (harmlessness) with the Safe RLHF cost loss."),
    ("attributes", _SCORE, ("attributes",), "Train a HelpSteer multi-attribute regression model (five heads)."),
    ("moderation", ("safealign.moderation.train:ModerationConfig", "safealign.moderation.train", "train_moderator"), (),
     "Train a severity-sensitive moderator (unsafe, harm categories, severity) on QA records."),
    ("sft", ("safealign.train.sft:SFTConfig", "safealign.train.sft", "train_sft"), (),
     "Supervised fine-tuning of a policy on responses (prompt tokens masked out of the loss)."),
    ("steerlm", ("safealign.train.sft:SteerLMConfig", "safealign.train.sft", "train_sft"), (),
     "SteerLM: SFT conditioned on each response's attribute values (ask for values at inference with --attributes)."),
    ("dpo", ("safealign.train.dpo:DPOConfig", "safealign.train.dpo", "train_dpo"), (),
     "DPO or SafeDPO (--loss safe-dpo) of a policy on preference pairs."),
    ("ppo", _PPO, ("ppo",), "PPO of a policy against a reward model (cost only logged)."),
    ("ppo-lag", _PPO, ("ppo-lag",), "Safe RLHF: PPO-Lagrangian, max reward subject to mean cost ≤ d."),
    ("ppo-shaping", _PPO, ("ppo-shaping",), "PPO on reward − λ·cost with λ fixed."),
):
    config_command(app, _name, _cls, _trainer(_module, _function, *_args), _help)
