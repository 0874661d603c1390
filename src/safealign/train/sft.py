"""Supervised fine-tuning: next-token likelihood of responses, prompts masked out of the loss.

L = −Σ_i Σ_{t ∈ response_i} log π(y_t | x_i, y_<t) / Σ_i |response_i|

(the mean token NLL over the response tokens of a micro-batch). Which response a record
teaches is set by `SFTConfig.response` and `SFTConfig.safe_only`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from accelerate.utils import set_seed
from torch import Tensor, nn

from safealign.data.errors import DataError
from safealign.data.records import AttributeRecord, DualPreferencePair, PreferencePair, QARecord, Record, dialogue
from safealign.data.steer import STEER_ATTRIBUTES, conditioned
from safealign.train.loop import Task, train
from safealign.train.config import ModelTrainConfig, load_records, write_run_config
from safealign.train.policy import (
    chosen_response_id,
    collate_sequences,
    encode_response,
    load_policy,
    save_policy,
    sequence_logprobs,
)

_BASIS = {"better": "helpfulness", "safer": "harmlessness", "both": "both"}


@dataclass
class SFTConfig(ModelTrainConfig):
    """Supervised fine-tuning of a policy (every loop, model and data setting applies too)."""

    response: Literal["safer", "better", "both"] = "safer"
    """Dual-preference pairs: learn the safer response (default: SFT here is a safety step),
    the better (more helpful) one, or only pairs where the better one is also the safer."""
    safe_only: bool = True
    """Skip responses labelled unsafe (QA records, and the chosen response of dual pairs): the
    safer of two responses can still be harmful, and SFT would teach it. Unlabelled responses
    and single preferences' `chosen` are kept."""


def train_sft(cfg: SFTConfig) -> dict[str, float]:
    """Load data and the policy, run the shared loop; returns the final eval metrics.

    Eval metrics: `eval/loss` (mean token NLL over response tokens) and `eval/perplexity` (its exp).
    """
    set_seed(cfg.seed)
    train_records, eval_records = load_records(cfg)
    if isinstance(cfg, SteerLMConfig):
        train_records, eval_records = steerlm_records(train_records, cfg), steerlm_records(eval_records, cfg)
    model, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, lora=cfg.lora, gradient_checkpointing=cfg.gradient_checkpointing)
    train_examples = sft_examples(train_records, cfg, tokenizer, "training")
    eval_examples = sft_examples(eval_records, cfg, tokenizer, "evaluation")
    if not train_examples:
        raise DataError(f"sft: none of the {len(train_records)} training records has a response to learn "
                        f"(response={cfg.response}, safe_only={cfg.safe_only}); try safe_only: false")
    print(f"sft: {len(train_examples)} training and {len(eval_examples)} evaluation examples", flush=True)
    write_run_config(cfg, "steerlm" if isinstance(cfg, SteerLMConfig) else "sft")
    pad_id = tokenizer.pad_token_id
    task = Task(
        model=model,
        train_examples=train_examples,
        eval_examples=eval_examples,
        lengths=[len(e["input_ids"]) for e in train_examples],
        collate=lambda batch: collate_sequences(batch, pad_id),
        loss=_loss,
        evaluate=_evaluate,
        export=lambda m, folder: save_policy(m, tokenizer, Path(folder)),
        summarize=_summarize,
    )
    return train(task, cfg)


@dataclass
class SteerLMConfig(SFTConfig):
    """Attribute-conditioned SFT (SteerLM): each response is learned with its attribute values in the conversation."""

    attributes_style: Literal["system", "nemo"] = "system"
    """How the values are rendered: a system line (chat templates), or NeMo-Aligner's <extra_id_2>name:value,... after the prompt."""
    condition_on: list[str] = field(default_factory=lambda: list(STEER_ATTRIBUTES))
    """The attributes rendered (those a record has; a record with none is learned unconditioned)."""
    min_harmlessness: float = 0.0
    """Responses whose harmlessness is below this are not learned (kept: those without a harmlessness value)."""

    def validate(self) -> None:
        """Check settings once, early."""
        super().validate()
        unknown = [name for name in self.condition_on if name not in STEER_ATTRIBUTES]
        if unknown:
            from safealign.config import ConfigError

            raise ConfigError(f"condition_on: {unknown[0]!r}: not an attribute ({', '.join(STEER_ATTRIBUTES)})")


def steerlm_records(records: list[Record], cfg: SteerLMConfig) -> list[Record]:
    """Attribute records conditioned on their own (rounded) values; others are an error: SteerLM learns from attribute records."""
    out = []
    for r in records:
        if not isinstance(r, AttributeRecord):
            raise DataError(f"{r.origin}: steerlm learns from attribute records (e.g. `safealign label attributes` output), "
                            f"not {r.record_type} records")
        if r.harmlessness is not None and r.harmlessness < cfg.min_harmlessness:
            continue
        values = {name: int(round(getattr(r, name))) for name in cfg.condition_on if getattr(r, name) is not None}
        out.append(conditioned(r, values, cfg.attributes_style) if values else r)
    if len(out) < len(records):
        print(f"steerlm: left out {len(records) - len(out)} of {len(records)} responses below harmlessness {cfg.min_harmlessness}",
              flush=True)
    return out


def sft_examples(records: list[Record], cfg: SFTConfig, tokenizer: Any, split: str = "training") -> list[dict[str, list[int]]]:
    """Tokenised (dialogue, response) examples with prompt-masked labels, one per kept record."""
    examples, skipped = [], 0
    for record in records:
        response = sft_response(record, cfg)
        if response is None:
            skipped += 1
            continue
        examples.append(encode_response(tokenizer, dialogue(record), response, cfg.max_length))
    if skipped:
        print(f"sft: skipped {skipped} of {len(records)} {split} records (response={cfg.response}, safe_only={cfg.safe_only})", flush=True)
    return examples


def sft_response(record: Record, cfg: SFTConfig) -> str | None:
    """The response `record` teaches, or None when the settings skip it."""
    if isinstance(record, PreferencePair):
        return record.chosen
    if isinstance(record, AttributeRecord):
        return record.response
    if isinstance(record, QARecord):
        return None if cfg.safe_only and record.is_safe is False else record.response
    if isinstance(record, DualPreferencePair):
        chosen = chosen_response_id(record, _BASIS[cfg.response])  # type: ignore[arg-type]
        if chosen is None or (cfg.safe_only and record.is_safe(chosen) is False):
            return None
        return record.response(chosen)
    raise DataError(f"{record.origin}: SFT needs a response to learn; {record.record_type} records have none")


def _loss(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    log_probs, tokens = sequence_logprobs(model, batch)
    return -log_probs.sum() / tokens.sum().clamp_min(1), {}


def _evaluate(model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
    log_probs, tokens = sequence_logprobs(model, batch)
    return {"nll": -log_probs, "tokens": tokens.float()}


def _summarize(values: dict[str, list[float]]) -> dict[str, float]:
    # Token-weighted over the whole eval set, so long responses count per token, as in training.
    loss = sum(values["nll"]) / max(1.0, sum(values["tokens"]))
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0))}
