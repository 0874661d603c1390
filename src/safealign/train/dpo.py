"""DPO and SafeDPO on the shared loop: one task, the objective chosen by `DPOConfig.loss`.

With r(y) = β·(log π(y|x) − log π_ref(y|x)) the implicit reward of a response:

- dpo:      L = −mean log σ(r(y_w) − r(y_l)), chosen y_w by `preference` (Rafailov et al. 2023);
- safe-dpo: the same pairs, except that when the chosen response is labelled unsafe and the
  rejected one safe, the two swap (a safe answer is preferred to an unsafe one whatever its
  helpfulness); then, with u = 1 for a response labelled unsafe (0 safe or unlabelled),
  L = −mean log σ(r(y_w) − r(y_l) − Δ·(u_l − u_w))   (Kim et al. 2025, SafeDPO).
  A safe-over-unsafe pair must win by the extra margin Δ; same-label pairs are plain DPO.

The reference π_ref is the initial policy and never a second model in memory: with LoRA it
is the same model with its adapters disabled; without LoRA its log-probs are computed once
before training (one forward pass over the train and eval pairs, sharded over processes) and
carried in the batches: one pass in all instead of one per step (the whole model must fit on
one device for it; under FSDP use LoRA). The chosen and rejected responses go through one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel, gather_object, set_seed
from torch import Tensor, nn

from safealign.config import ConfigError
from safealign.data.errors import DataError
from safealign.data.records import DualPreferencePair, PreferencePair, Record, dialogue
from safealign.losses import dpo_loss, safe_dpo_margin
from safealign.models.packing import PackingRule, packed_length, should_pack
from safealign.train.batching import micro_batches
from safealign.train.loop import Task, make_accelerator, train
from safealign.train.config import ModelTrainConfig, load_records, write_run_config
from safealign.train.policy import (
    chosen_response_id,
    collate_packed_pairs,
    collate_sequences,
    encode_response,
    load_policy,
    policy_packing_rule,
    save_policy,
    sequence_logprobs,
)


@dataclass
class DPOConfig(ModelTrainConfig):
    """Direct preference optimisation of a policy (every loop, model and data setting applies too)."""

    beta: float = 0.1
    """β: strength of the implicit KL tie to the reference policy (smaller drifts further)."""
    preference: Literal["helpfulness", "harmlessness", "both"] = "helpfulness"
    """Which response of a dual pair is chosen: the better, the safer, or (both) only pairs where
    they agree. Single preferences use their own chosen/rejected."""
    loss: Literal["dpo", "safe-dpo"] = "dpo"
    """dpo, or safe-dpo: chosen labelled unsafe and rejected safe swap, plus the margin below."""
    safety_margin: float = 1.0
    """Δ of safe-dpo, in implicit-reward units (β·log-ratio): a safe-over-unsafe pair must win by Δ.
    1.0 (Δ/β = 10 nats of log-ratio gap at β = 0.1) is a firm push that still leaves the
    preference term in charge; 0 keeps only the swap. Unused by dpo."""

    def validate(self) -> None:
        """Check settings once, early."""
        super().validate()
        if self.beta <= 0:
            raise ConfigError(f"beta: must be above 0, got {self.beta}")
        if self.safety_margin < 0:
            raise ConfigError(f"safety_margin: must not be negative, got {self.safety_margin}")


def train_dpo(cfg: DPOConfig) -> dict[str, float]:
    """Load pairs and the policy, fix the reference, run the shared loop; returns the final eval metrics.

    Metrics (train/ and eval/): loss, reward_chosen, reward_rejected, reward_margin, accuracy
    (share of pairs whose chosen response has the higher implicit reward).
    """
    set_seed(cfg.seed)
    train_records, eval_records = load_records(cfg)
    model, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, lora=cfg.lora, gradient_checkpointing=cfg.gradient_checkpointing)
    train_examples = dpo_examples(train_records, cfg, tokenizer, "training")
    eval_examples = dpo_examples(eval_records, cfg, tokenizer, "evaluation")
    if not train_examples:
        raise DataError(f"dpo: none of the {len(train_records)} training pairs is usable (preference={cfg.preference})")
    print(f"{cfg.loss}: {len(train_examples)} training and {len(eval_examples)} evaluation pairs", flush=True)
    write_run_config(cfg, cfg.loss)
    pad_id = tokenizer.pad_token_id
    acc = make_accelerator(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)  # the loop sets it too, but the reference pass comes first
    packing = policy_packing_rule(model) if cfg.pack_pairs else None
    if cfg.lora is None:
        attach_reference(model, train_examples + eval_examples, pad_id, cfg.per_device_batch_size, acc, packing)
    task = Task(
        model=model,
        train_examples=train_examples,
        eval_examples=eval_examples,
        lengths=[_length(e, packing is not None) for e in train_examples],
        collate=lambda batch: collate_pairs(batch, pad_id, packing),
        loss=lambda m, batch: dpo_batch_loss(m, batch, cfg),
        evaluate=lambda m, batch: _evaluate(m, batch, cfg),
        export=lambda m, folder: save_policy(m, tokenizer, Path(folder)),
    )
    return train(task, cfg, acc)


def dpo_examples(records: list[Record], cfg: DPOConfig, tokenizer: Any, split: str = "training") -> list[dict[str, Any]]:
    """Tokenised (chosen, rejected) pairs with u_w, u_l (1 = labelled unsafe); counts are printed."""
    examples, dropped, unsafe_over_safe = [], 0, 0
    for record in records:
        pair = preference_pair(record, cfg)
        if pair is None:
            dropped += 1
            continue
        chosen, rejected, u_w, u_l, swapped = pair
        unsafe_over_safe += swapped
        turns = dialogue(record)
        examples.append({
            "chosen": encode_response(tokenizer, turns, chosen, cfg.max_length),
            "rejected": encode_response(tokenizer, turns, rejected, cfg.max_length),
            "unsafe_chosen": u_w,
            "unsafe_rejected": u_l,
        })
    if dropped:
        print(f"{cfg.loss}: dropped {dropped} {split} pairs whose better and safer responses differ (preference=both)", flush=True)
    if unsafe_over_safe:
        what = "swapped so that the safe one is chosen" if cfg.loss == "safe-dpo" else "kept as given"
        print(f"{cfg.loss}: {unsafe_over_safe} {split} pairs prefer a response labelled unsafe to one labelled safe; {what}", flush=True)
    return examples


def _length(example: dict[str, Any], packed: bool) -> int:
    chosen, rejected = example["chosen"]["input_ids"], example["rejected"]["input_ids"]
    return packed_length(chosen, rejected) if packed else max(len(chosen), len(rejected))


def preference_pair(record: Record, cfg: DPOConfig) -> tuple[str, str, int, int, bool] | None:
    """(chosen, rejected, u_w, u_l, unsafe_over_safe) of a record, or None when `preference` drops it.

    `unsafe_over_safe` flags a pair whose preferred response is labelled unsafe and the other
    safe; safe-dpo swaps it (then u_w = 0, u_l = 1), dpo keeps it and only counts it.
    """
    if isinstance(record, PreferencePair):
        return record.chosen, record.rejected, 0, 0, False
    if not isinstance(record, DualPreferencePair):
        raise DataError(f"{record.origin}: DPO trains on preference pairs, not {record.record_type} records")
    w = chosen_response_id(record, cfg.preference)
    if w is None:
        return None
    flagged = record.is_safe(w) is False and record.is_safe(1 - w) is True
    if flagged and cfg.loss == "safe-dpo":
        w = 1 - w
    u = [int(record.is_safe(i) is False) for i in (0, 1)]
    return record.response(w), record.response(1 - w), u[w], u[1 - w], flagged


def collate_pairs(batch: list[dict[str, Any]], pad_id: int, packing: PackingRule | bool | None = None) -> dict[str, Any]:
    """Rows [chosen_0..chosen_B, rejected_0..rejected_B] for one forward pass, size = (2B, L).

    `packing` (a rule, or True to always pack): one row per pair where it pays, the prompt
    run once (`collate_packed_pairs`); same order.
    """
    ids = [(e["chosen"]["input_ids"], e["rejected"]["input_ids"]) for e in batch]
    if should_pack(packing, ids):
        out = collate_packed_pairs([(e["chosen"], e["rejected"]) for e in batch], pad_id)
    else:
        out = collate_sequences([e["chosen"] for e in batch] + [e["rejected"] for e in batch], pad_id)
    for key in ("unsafe_chosen", "unsafe_rejected"):
        out[key] = torch.tensor([e[key] for e in batch], dtype=torch.float32)  # size = (B,)
    if "reference" in batch[0]:
        out["reference"] = torch.tensor([e["reference"] for e in batch], dtype=torch.float32)  # size = (B, 2)
    return out


@torch.no_grad()
def reference_logprobs(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """log π_ref of the chosen and of the rejected responses, each size = (B,).

    Precomputed values when the batch carries them; otherwise the policy itself with its LoRA
    adapters disabled (peft's `disable_adapter`), in eval mode so that dropout adds no noise.
    """
    if "reference" in batch:
        return batch["reference"][:, 0], batch["reference"][:, 1]
    peft_model = extract_model_from_parallel(model)
    if not hasattr(peft_model, "disable_adapter"):
        raise RuntimeError("no reference log-probs in the batch and no LoRA adapters to disable")
    was_training = model.training
    model.eval()
    try:
        # The wrapped model is called (not peft_model) so DDP/FSDP wrappers still see the forward.
        with peft_model.disable_adapter():
            log_probs, _ = sequence_logprobs(model, batch)
    finally:
        model.train(was_training)
    chosen, rejected = log_probs.float().chunk(2)
    return chosen, rejected


@torch.no_grad()
def attach_reference(
    model: nn.Module, examples: list[dict[str, Any]], pad_id: int, batch_size: int, acc: Accelerator,
    packing: PackingRule | None = None,
) -> None:
    """Store log π_ref(chosen), log π_ref(rejected) of the (initial) `model` in each example.

    Each process scores its share; the shares are gathered so every process has all values.
    """
    model.to(acc.device)
    model.eval()
    mine: dict[int, tuple[float, float]] = {}
    for chunk in micro_batches(list(range(acc.process_index, len(examples), acc.num_processes)), batch_size):
        batch = collate_pairs([examples[i] for i in chunk], pad_id, packing)
        batch = {k: v.to(acc.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        with acc.autocast():
            log_probs, _ = sequence_logprobs(model, batch)
        chosen, rejected = log_probs.float().cpu().chunk(2)
        mine.update({i: (c, r) for i, c, r in zip(chunk, chosen.tolist(), rejected.tolist())})
    shares = gather_object([mine]) if acc.num_processes > 1 else [mine]
    values = {i: v for share in shares for i, v in share.items()}
    for i, example in enumerate(examples):
        example["reference"] = values[i]


def _rewards(model: nn.Module, batch: dict[str, Any], cfg: DPOConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, chosen rewards, rejected rewards, margins) of a batch, the rewards size = (B,)."""
    log_probs, _ = sequence_logprobs(model, batch)
    chosen, rejected = log_probs.chunk(2)
    reference_chosen, reference_rejected = reference_logprobs(model, batch)
    margin = torch.zeros_like(chosen)
    if cfg.loss == "safe-dpo":
        margin = safe_dpo_margin(batch["unsafe_chosen"], batch["unsafe_rejected"], cfg.safety_margin)
    loss, chosen_reward, rejected_reward = dpo_loss(chosen, rejected, reference_chosen, reference_rejected, cfg.beta, margin)
    return loss, chosen_reward, rejected_reward, margin


def dpo_batch_loss(model: nn.Module, batch: dict[str, Any], cfg: DPOConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The `cfg.loss` objective on a collated batch and its train/ metrics (batch means)."""
    loss, chosen, rejected, _ = _rewards(model, batch, cfg)
    return loss, {
        "train/reward_chosen": chosen.mean(),
        "train/reward_rejected": rejected.mean(),
        "train/reward_margin": (chosen - rejected).mean(),
        "train/accuracy": (chosen > rejected).float().mean(),
    }


def _evaluate(model: nn.Module, batch: dict[str, Any], cfg: DPOConfig) -> dict[str, Tensor]:
    _, chosen, rejected, margin = _rewards(model, batch, cfg)
    return {
        "eval/loss": -F.logsigmoid(chosen - rejected - margin),  # dpo_loss per pair, for the eval mean
        "eval/reward_chosen": chosen,
        "eval/reward_rejected": rejected,
        "eval/reward_margin": chosen - rejected,
        "eval/accuracy": (chosen > rejected).float(),
    }
