"""The settings of a safety evaluation, as a config dataclass (for pipelines and the CLI alike)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safealign.config import ConfigError
from safealign.inference.settings import SamplingSettings


@dataclass
class SafetyEvalConfig(SamplingSettings):
    """Sample answers from a policy for a prompt set and judge them (sampling fields from `SamplingSettings`)."""

    policy: str = ""
    """The policy: alias, folder or hub id."""
    moderator: str = ""
    """Moderation folder (the judge)."""
    prompts: list[str] = field(default_factory=list)
    """Prompt data entries (PATH_OR_NAME[:PROPORTION])."""
    reward: str | None = None
    """Reward model folder (scores reported when given)."""
    cost: str | None = None
    """Cost model folder (scores reported when given)."""
    output_dir: str = "runs/eval-safety"
    """Where answers.jsonl, metrics.json and the plot go."""
    per_category: int | None = None
    """Take the first N prompts of every category."""
    limit: int | None = None
    """Only the first N prompts (after per_category)."""
    batch_size: int = 8
    """Prompts per generate call."""

    def validate(self) -> None:
        """Check settings once, early."""
        for name in ("policy", "moderator"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: required")
        if not self.prompts:
            raise ConfigError("prompts: required")


def run_safety_eval(cfg: SafetyEvalConfig) -> dict[str, Any]:
    """Run the evaluation and write its outputs; returns the metrics."""
    from accelerate.utils import set_seed

    from safealign.data.load import load
    from safealign.evaluate.safety import evaluate_safety, first_per_category, write_outputs
    from safealign.inference.generate import load_generator
    from safealign.moderation.model import Moderator
    from safealign.inference.scoring import ModelScorer

    records = load(cfg.prompts).records
    if cfg.per_category:
        records = first_per_category(records, cfg.per_category)
    records = records[: cfg.limit]
    judge = Moderator.load(cfg.moderator)
    model, tokenizer = load_generator(cfg.policy)
    set_seed(cfg.seed)
    metrics, rows = evaluate_safety(
        model, tokenizer, records, judge, cfg.sampling(),
        ModelScorer(cfg.reward) if cfg.reward else None, ModelScorer(cfg.cost) if cfg.cost else None, cfg.batch_size,
    )
    write_outputs(metrics, rows, Path(cfg.output_dir))
    return metrics
