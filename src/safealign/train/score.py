"""Reward, cost and multi-attribute score models: one config, three small tasks on the shared loop.

- reward: Bradley–Terry on helpfulness preferences (dual pairs by `better_response_id`,
  single preferences as given);
- cost: the Safe RLHF cost loss on harmlessness preferences (dual pairs by
  `safer_response_id` with their safety labels as sign terms; single preferences such as
  HH-RLHF harmless pairs as safer-vs-less-safe without sign terms);
- attributes: masked regression of the five HelpSteer attributes, one head output each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate.utils import set_seed
from torch import Tensor, nn

from safealign.config import ConfigError
from safealign.data.derive import pair_to_preference
from safealign.data.errors import DataError
from safealign.data.records import ATTRIBUTES, AttributeRecord, DualPreferencePair, PreferencePair, Record, dialogue
from safealign.losses import bradley_terry_loss, cost_loss, masked_regression_loss
from safealign.models.packing import PackingRule, last_token_places, pack_pairs, packed_length, should_pack
from safealign.models.score import ScoreModel, load_score_tokenizer
from safealign.models.template import encode_dialogue
from safealign.inference.batching import pad
from safealign.train.config import ModelTrainConfig, load_records, write_run_config
from safealign.train.loop import Task, train

Kind = Literal["reward", "cost", "attributes"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class ScoreTrainConfig(ModelTrainConfig):
    """Training a reward, cost or attribute model (every model and loop setting applies too)."""

    regularization: float = 0.001
    """μ of the μ·mean(score²) term (reward and cost losses)."""
    normalize_scores: bool = False
    """After training, store the mean/std of training scores with the model and output normalised scores.

    Reward and attribute scores become (s − mean) / std; cost scores only c / std, so that
    c > 0 still means unsafe."""
    length_balance: bool = False
    """Balance the training pairs so the preferred answer is the longer one in half of each length bucket ("A Long Way to Go")."""
    length_bucket_width: int = 20
    """Bucket width, in words of the preferred answer, for length_balance."""
    off_prompt_pairs: float = 0.0
    """Reward models: add this share of pairs that prefer a prompt's answer over another prompt's (the off-prompt one rejected)."""
    confidence_truncation: float = 0.0
    """Drop this share of the training pairs by a first-pass model's confidence (its margin), then train on the rest."""
    truncate: Literal["least", "most", "both"] = "least"
    """Which pairs confidence_truncation drops: the least confident, the most confident, or half from each end."""
    confidence_model: str | None = None
    """The first-pass reward/cost model folder whose margins rank the pairs; None: train one with these settings in output_dir/first-pass."""

    def validate(self) -> None:
        """Check settings once, early."""
        super().validate()
        if self.length_bucket_width < 1:
            raise ConfigError(f"length_bucket_width: must be at least 1, got {self.length_bucket_width}")
        if self.off_prompt_pairs < 0:
            raise ConfigError(f"off_prompt_pairs: must not be negative, got {self.off_prompt_pairs}")
        if not 0 <= self.confidence_truncation < 1:
            raise ConfigError(f"confidence_truncation: must be in [0, 1), got {self.confidence_truncation}")
        if self.confidence_model and not self.confidence_truncation:
            raise ConfigError("confidence_model: given without confidence_truncation")


def train_score_model(cfg: ScoreTrainConfig, kind: Kind) -> dict[str, float]:
    """Load data, build the model and run the shared loop; returns final eval metrics."""
    set_seed(cfg.seed)
    train_records, eval_records = load_records(cfg)
    train_records = _against_length_bias(cfg, kind, train_records)
    if cfg.confidence_truncation:
        train_records = _confidence_truncated(cfg, kind, train_records, eval_records)
    return _fit(cfg, kind, train_records, eval_records)


def _fit(cfg: ScoreTrainConfig, kind: Kind, train_records: list[Record], eval_records: list[Record]) -> dict[str, float]:
    """Build the model and run the shared loop on these records."""
    set_seed(cfg.seed)
    tokenizer = load_score_tokenizer(cfg.model)
    names = list(ATTRIBUTES) if kind == "attributes" else [kind]
    model = ScoreModel.from_base(
        cfg.model, len(names), names, kind=kind, dtype=DTYPES[cfg.dtype],
        lora=cfg.lora, gradient_checkpointing=cfg.gradient_checkpointing,
    )
    build = _attribute_examples if kind == "attributes" else _pair_examples
    train_examples = build(train_records, kind, tokenizer, cfg.max_length)
    eval_examples = build(eval_records, kind, tokenizer, cfg.max_length)
    packing = model.packing_rule() if cfg.pack_pairs and kind != "attributes" else None
    if packing is not None:
        for e in train_examples + eval_examples:
            e["length"] = packed_length(e["a"], e["b"])
    print(f"{kind} model: {len(train_examples)} training and {len(eval_examples)} evaluation examples", flush=True)
    write_run_config(cfg, kind)
    pad_id = tokenizer.pad_token_id

    def export(model: nn.Module, folder: Path) -> None:
        if cfg.normalize_scores:
            _fit_normalizer(model, train_examples, pad_id, cfg.per_device_batch_size)
        model.save_pretrained(folder, tokenizer)

    task = Task(
        model=model,
        train_examples=train_examples,
        eval_examples=eval_examples,
        lengths=[e["length"] for e in train_examples],
        collate=lambda batch: collate(batch, pad_id, packing),
        loss=_LOSSES[kind](cfg.regularization),
        evaluate=_EVALS[kind],
        export=export,
    )
    return train(task, cfg)


def _against_length_bias(cfg: ScoreTrainConfig, kind: str, records: list[Record]) -> list[Record]:
    """The training pairs after length_balance and off_prompt_pairs (the evaluation split is never changed)."""
    from safealign.data.length import length_balanced, off_prompt_pairs

    if (cfg.length_balance or cfg.off_prompt_pairs) and kind == "attributes":
        raise ConfigError("length_balance, off_prompt_pairs: for reward and cost models (pairs), not attribute models")
    if cfg.off_prompt_pairs and kind != "reward":
        raise ConfigError("off_prompt_pairs: for reward models (an off-prompt answer is irrelevant, not less safe)")
    which = "better" if kind == "reward" else "safer"
    if cfg.length_balance:
        records, report = length_balanced(records, which, cfg.length_bucket_width, cfg.seed)
        print(f"length balance: read {report.read} | kept {report.kept} | dropped {report.dropped}; the preferred answer "
              f"is the longer in {report.longer_preferred_before:.3f} of unequal pairs before, "
              f"{report.longer_preferred_after:.3f} after", flush=True)
    if cfg.off_prompt_pairs:
        extra = off_prompt_pairs(records, cfg.off_prompt_pairs, which, cfg.seed)
        print(f"off-prompt pairs: {len(extra)} added to {len(records)}", flush=True)
        records = records + extra
    return records


def _confidence_truncated(cfg: ScoreTrainConfig, kind: Kind, records: list[Record], eval_records: list[Record]) -> list[Record]:
    """The training pairs less the share a first-pass model is least/most confident about (the evaluation split is never changed)."""
    from safealign.data.length import preference_sides, confidence_truncated
    from safealign.inference.scoring import ModelScorer

    if kind == "attributes":
        raise ConfigError("confidence_truncation: for reward and cost models (pairs), not attribute models")
    folder = cfg.confidence_model
    if folder is None:
        first = replace(cfg, output_dir=str(Path(cfg.output_dir) / "first-pass"), confidence_truncation=0.0,
                        confidence_model=None, normalize_scores=False)
        folder = str(Path(first.output_dir) / "model")
        if (Path(first.output_dir) / "final_metrics.json").is_file() and Path(folder).is_dir():
            print(f"confidence truncation: the first pass in {first.output_dir} is done, reusing it", flush=True)
        else:
            print(f"confidence truncation: a first pass in {first.output_dir}", flush=True)
            _fit(first, kind, records, eval_records)
    which = "better" if kind == "reward" else "safer"
    scored = [(i, r, sides) for i, r in enumerate(records) if (sides := preference_sides(r, which)) is not None]
    scorer = ModelScorer(folder, max_length=cfg.max_length, batch_size=2 * cfg.per_device_batch_size, dtype=cfg.dtype)
    scorer.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    turns = [dialogue(r) for _, r, _ in scored]
    preferred = scorer(turns, [s[0] for _, _, s in scored], []).tolist()
    other = scorer(turns, [s[1] for _, _, s in scored], []).tolist()
    margins: list[float | None] = [None] * len(records)
    for (i, _, _), p, o in zip(scored, preferred, other):
        margins[i] = p - o if kind == "reward" else o - p  # a cost model is confident when the less safe answer costs more
    kept, report = confidence_truncated(records, margins, cfg.confidence_truncation, cfg.truncate, which)
    print(f"confidence truncation ({cfg.truncate} confident, by {folder}): read {report.read} | kept {report.kept} | "
          f"dropped {report.dropped}{f' ({report.not_scored} without that order, kept)' if report.not_scored else ''}; mean margin {report.mean_margin_before:.3f} → {report.mean_margin_after:.3f}; "
          f"the preferred answer is the longer in {report.longer_preferred_before:.3f} of unequal pairs before, "
          f"{report.longer_preferred_after:.3f} after", flush=True)
    return kept


def _pair_examples(records: list[Record], kind: str, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Pairs as (first, second) token ids where the first must score higher (reward) or lower (cost)."""
    examples = []
    unordered = 0
    for r in records:
        if isinstance(r, DualPreferencePair) and kind == "reward" and r.better_response_id is None:
            unordered += 1  # no helpfulness order (e.g. realign pairs): a reward model has nothing to learn from it
            continue
        if isinstance(r, DualPreferencePair):
            first = r.better_response_id if kind == "reward" else r.safer_response_id
            pair = pair_to_preference(r, "helpfulness" if kind == "reward" else "harmlessness")
            signs = (_sign(r.is_safe(first)), _sign(r.is_safe(1 - first)))
            cats = r.harm_categories(1 - first) + r.harm_categories(first)
        elif isinstance(r, PreferencePair):
            pair, signs, cats = r, (0, 0), ()
        else:
            raise DataError(f"{r.origin}: a {kind} model trains on preference pairs, not {r.record_type} records")
        turns = dialogue(pair)
        a = encode_dialogue(tokenizer, turns, pair.chosen, max_length)
        b = encode_dialogue(tokenizer, turns, pair.rejected, max_length)
        examples.append({"a": a, "b": b, "sign_a": signs[0], "sign_b": signs[1], "categories": cats, "length": max(len(a), len(b))})
    if unordered:
        print(f"reward model: skipped {unordered} of {len(records)} pair(s) with no helpfulness order "
              f"(better_response_id absent), kept {len(examples)}", flush=True)
    if unordered and not examples:
        raise DataError(f"no pair to train a {kind} model on: all {unordered} pair(s) have no helpfulness order")
    return examples


def _attribute_examples(records: list[Record], kind: str, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    examples = []
    for r in records:
        if not isinstance(r, AttributeRecord):
            raise DataError(f"{r.origin}: an attribute model trains on attribute records, not {r.record_type} records")
        ids = encode_dialogue(tokenizer, dialogue(r), r.response, max_length)
        values = r.attributes()
        examples.append({
            "a": ids,
            "target": [0.0 if v is None else v for v in values],
            "mask": [v is not None for v in values],
            "length": len(ids),
        })
    return examples


def _sign(is_safe: bool | None) -> int:
    return 0 if is_safe is None else (-1 if is_safe else 1)


def collate(batch: list[dict[str, Any]], pad_id: int, packing: PackingRule | bool | None = None) -> dict[str, Any]:
    """Pairs go in one forward pass: rows [a_0..a_B, b_0..b_B], size = (2B, L).

    `packing` (a rule, or True to always pack): one row per pair where the rule says it pays,
    the shared prefix once (`safealign.models.packing`); scores come back in the same order.
    """
    sequences = [e["a"] for e in batch] + [e["b"] for e in batch if "b" in e]
    out: dict[str, Any] = {"num_tokens": sum(len(s) for s in sequences)}
    pairs = [(e["a"], e["b"]) for e in batch] if "b" in batch[0] else []
    if should_pack(packing, pairs):
        rows = pack_pairs(pairs, pad_id)
        out.update({k: rows[k] for k in ("input_ids", "attention_mask", "position_ids")})
        out["read_at"] = last_token_places(rows)  # size = (2B, 2)
    else:
        out["input_ids"], out["attention_mask"] = pad(sequences, pad_id)
    if "b" in batch[0]:
        out["sign_a"] = torch.tensor([e["sign_a"] for e in batch], dtype=torch.float32)  # size = (B,)
        out["sign_b"] = torch.tensor([e["sign_b"] for e in batch], dtype=torch.float32)
    else:
        out["target"] = torch.tensor([e["target"] for e in batch], dtype=torch.float32)  # size = (B, 5)
        out["mask"] = torch.tensor([e["mask"] for e in batch], dtype=torch.bool)
    return out


def _pair_scores(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    packing = {k: batch[k] for k in ("position_ids", "read_at") if k in batch}
    scores = model(batch["input_ids"], batch["attention_mask"], **packing)[:, 0].float()  # size = (2B,)
    half = scores.shape[0] // 2
    return scores[:half], scores[half:]


def _reward_loss(mu: float):
    def loss(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        better, worse = _pair_scores(model, batch)
        return bradley_terry_loss(better, worse, mu), {"train/accuracy": (better > worse).float().mean()}

    return loss


def _cost_loss(mu: float):
    def loss(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        safer, unsafer = _pair_scores(model, batch)
        value = cost_loss(safer, unsafer, batch["sign_a"], batch["sign_b"], mu)
        return value, {"train/accuracy": (unsafer > safer).float().mean()}

    return loss


def _attribute_loss(mu: float):
    def loss(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        predicted = model(batch["input_ids"], batch["attention_mask"]).float()
        return masked_regression_loss(predicted, batch["target"], batch["mask"]), {}

    return loss


def _reward_eval(model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
    better, worse = _pair_scores(model, batch)
    return {
        "eval/accuracy": (better > worse).float(),
        "eval/reward_better": better,
        "eval/reward_worse": worse,
        "eval/loss": -torch.nn.functional.logsigmoid(better - worse),
    }


def _cost_eval(model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
    safer, unsafer = _pair_scores(model, batch)
    costs, signs = torch.cat([safer, unsafer]), torch.cat([batch["sign_a"], batch["sign_b"]])
    sign_ok = ((costs > 0) == (signs > 0)).float()
    return {
        "eval/accuracy": (unsafer > safer).float(),
        "eval/accuracy_sign": torch.where(signs != 0, sign_ok, torch.full_like(sign_ok, math.nan)),
        "eval/cost_safer": safer,
        "eval/cost_unsafer": unsafer,
    }


def _attribute_eval(model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
    predicted = model(batch["input_ids"], batch["attention_mask"]).float()
    error = (predicted - batch["target"]).abs()
    nan = torch.full_like(error, math.nan)
    masked = torch.where(batch["mask"], error, nan)
    out = {f"eval/mae_{name}": masked[:, i] for i, name in enumerate(ATTRIBUTES)}
    out["eval/mae"] = masked.nanmean(dim=1)
    return out


_LOSSES = {"reward": _reward_loss, "cost": _cost_loss, "attributes": _attribute_loss}
_EVALS = {"reward": _reward_eval, "cost": _cost_eval, "attributes": _attribute_eval}


@torch.no_grad()
def _fit_normalizer(model: nn.Module, examples: list[dict[str, Any]], pad_id: int, batch_size: int, limit: int = 2000) -> None:
    """Running mean/std of the trained model's scores on (up to `limit`) training responses."""
    model.eval()
    sequences = [seq for e in examples for seq in (e["a"], e.get("b")) if seq is not None][:limit]
    for start in range(0, len(sequences), batch_size):
        ids, mask = pad(sequences[start : start + batch_size], pad_id)
        device = next(model.parameters()).device
        model.update_normalizer(model(ids.to(device), mask.to(device)).float())
    model.normalized = True
