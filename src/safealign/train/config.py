"""Settings shared by every training run (`RunConfig`) and by the supervised loop (`LoopConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from safealign.config import ConfigError


@dataclass
class RunConfig:
    """What every training run has: a folder, a seed, the optimiser, precision, checkpoints."""

    output_dir: str = "runs/train"
    """Run folder: checkpoints/, metrics.csv, metrics.jsonl, model/ and config.yaml go here."""
    seed: int = 42
    """Seed of the data order, the train/validation split, sampling and parameter init."""
    max_steps: int | None = None
    """Optimizer steps to run (for supervised training it overrides epochs)."""
    learning_rate: float = 2e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norm weights)."""
    warmup_ratio: float = 0.03
    """Share of the steps spent warming the learning rate up linearly."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Schedule after warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping; the norm is still logged)."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision where the hardware has it (bf16 on recent CPUs and GPUs)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    save_every: int = 50
    """Checkpoint every N optimizer steps (and at the end); 0 checkpoints only at the end."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    log_every: int = 1
    """Write train metrics every N optimizer steps."""
    resume: bool = True
    """Resume from the newest complete checkpoint in output_dir when there is one."""
    num_threads: int | None = None
    """torch CPU threads (None keeps torch's default)."""

    def validate(self) -> None:
        """Reject impossible settings early, naming the field."""
        for name in ("log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps: must be at least 1, got {self.max_steps}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate: must be above 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        for name in ("save_every", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must not be negative, got {getattr(self, name)}")


@dataclass
class LoopConfig(RunConfig):
    """Supervised training on examples: batches, epochs, evaluation."""

    epochs: float = 1.0
    """Passes over the training data (fractions allowed); ignored when max_steps is set."""
    per_device_batch_size: int = 8
    """Examples (pairs, for preference data) per process per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step. Global batch = per_device × processes × this."""
    max_length: int = 512
    """Tokens per sequence; longer ones lose their start (the response end is kept)."""
    group_by_length: bool = True
    """Batch sequences of similar length together (less padding); the order stays seeded."""
    eval_every: int = 50
    """Evaluate every N optimizer steps (and at the end); 0 evaluates only at the end."""

    def validate(self) -> None:
        """Reject impossible settings early, naming the field."""
        super().validate()
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs: must be above 0, got {self.epochs}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every: must not be negative, got {self.eval_every}")
