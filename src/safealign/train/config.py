"""Settings shared by every training run (`RunConfig`), the supervised loop (`LoopConfig`) and
every model trained on a dataset (`ModelTrainConfig`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml

from safealign.config import ConfigError
from safealign.models.score import LoraSettings

if TYPE_CHECKING:
    from safealign.data.records import Record


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
    dry_run: bool = False
    """Check the config and print what the run will need, then stop before loading any weights."""

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


@dataclass(kw_only=True)
class ModelTrainConfig(LoopConfig):
    """A base model trained on a dataset: what score models, SFT and DPO have in common."""

    model: str
    """Base model: an offline alias (smollm2-135m-instruct, minilm), a local folder or a hub id."""
    data: list[str]
    """Training data: PATH_OR_NAME[@REVISION][#SPLIT][:PROPORTION] entries, mixed."""
    eval_data: list[str] = field(default_factory=list)
    """Evaluation data; when empty, validation_split of data is held out (by prompt)."""
    validation_split: float = 0.1
    """Share of data held out for evaluation when eval_data is empty."""
    format: str | None = None
    """Source format for every data entry (detected when None)."""
    skip_invalid: bool = False
    """Go on past bad records (they are counted and reported) instead of stopping."""
    lora: LoraSettings | None = None
    """LoRA adapters (r, alpha, dropout, target_modules); None trains all weights. Merged on save."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights dtype of the model."""
    pack_pairs: bool = True
    """Pairs in one row each, their shared prefix (the prompt) run once (causal models; exact)."""

    def validate(self) -> None:
        """Check settings once, early."""
        super().validate()
        if not self.model:
            raise ConfigError("model: required (an alias, a folder or a hub id)")
        if not self.data:
            raise ConfigError("data: required (one or more PATH_OR_NAME[:PROPORTION])")
        if not 0 <= self.validation_split < 1:
            raise ConfigError(f"validation_split: must be in [0, 1), got {self.validation_split}")


def load_records(cfg: ModelTrainConfig) -> tuple[list[Record], list[Record]]:
    """Training and evaluation records, with the read/kept/rejected counts printed."""
    from safealign.data.load import load, split_train_validation

    loaded = load(cfg.data, cfg.format, strict=not cfg.skip_invalid, seed=cfg.seed)
    report = loaded.report
    other = f" | other side of the split {report.other_side}" if report.other_side else ""
    print(f"data: read {report.read} | kept {report.kept} | rejected {report.rejected}{other}", flush=True)
    if cfg.eval_data:
        return loaded.records, load(cfg.eval_data, cfg.format, strict=not cfg.skip_invalid).records
    return split_train_validation(loaded.records, cfg.validation_split, cfg.seed)


def write_run_config(cfg: RunConfig, kind: str) -> Path:
    """Create the run folder and record the full config in it as config.yaml."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"kind": kind, **asdict(cfg)}, sort_keys=False))
    return out
