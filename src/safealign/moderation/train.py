"""Training a moderator on QA records (dual pairs give two each) with the shared loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate.utils import set_seed
from torch import Tensor, nn

from safealign.config import ConfigError
from safealign.data.derive import pair_to_qa
from safealign.data.errors import DataError
from safealign.data.records import DualPreferencePair, PromptRecord, QARecord, Record, dialogue
from safealign.data.taxonomy import TAXONOMIES, get_taxonomy
from safealign.losses import moderation_loss
from safealign.moderation.metrics import binary_scores, tune_threshold
from safealign.moderation.model import (
    SEVERITIES,
    ModerationMeta,
    Moderator,
    SentenceEncoder,
    moderation_text,
    output_size,
    split_logits,
)
from safealign.inference.batching import pad
from safealign.train.config import ModelTrainConfig, load_records, write_run_config
from safealign.train.loop import Task, train


@dataclass
class ModerationConfig(ModelTrainConfig):
    """Training a severity-sensitive moderator (every model and loop setting applies too)."""

    model: str = "minilm"
    """Sentence encoder (embedding backend) or base model (finetune backend): alias, folder or hub id."""
    backend: Literal["embedding", "finetune"] = "embedding"
    """embedding: frozen sentence encoder + linear heads (fast on CPU); finetune: a score-model backbone trained end to end."""
    taxonomy: str = "pku-saferlhf"
    """Harm taxonomy of the category head: pku-saferlhf (19) or beavertails (14)."""
    balance_classes: bool = True
    """Weight the rare class of each label by its inverse frequency."""
    threshold_rule: Literal["youden", "balanced-f1", "f1", "fixed"] = "youden"
    """How the decision threshold on p(unsafe) is tuned on the evaluation split: youden (max TPR − FPR, robust to
    a skewed split), balanced-f1 (F1 with the classes weighted equal), f1 (plain best F1) or fixed (0.5)."""

    def validate(self) -> None:
        """Check settings once, early."""
        super().validate()
        if self.taxonomy not in TAXONOMIES:
            raise ConfigError(f"taxonomy: must be one of {', '.join(TAXONOMIES)}, got {self.taxonomy!r}")


def qa_records(records: list[Record]) -> list[QARecord]:
    """QA records for moderation: pairs split into their two responses; only safety-labelled ones.

    Labelled prompts (a prompt moderator's data) become QA records with an empty response:
    the prompt moderator reads the request alone, as `Moderator.predict_prompts` asks it.
    Prompts and responses do not mix in one moderator.
    """
    out: list[QARecord] = []
    prompts = responses = 0
    for r in records:
        if isinstance(r, DualPreferencePair):
            out.extend(q for q in pair_to_qa(r) if q.is_safe is not None)
            responses += 1
        elif isinstance(r, QARecord):
            if r.is_safe is not None:
                out.append(r)
            responses += 1
        elif isinstance(r, PromptRecord) and r.is_safe is not None:
            out.append(QARecord(prompt=r.prompt, response="", is_safe=r.is_safe, harm_categories=r.harm_categories,
                                taxonomy=r.taxonomy, system=r.system, context=r.context, source=r.source, origin=r.origin))
            prompts += 1
        else:
            raise DataError(f"{r.origin}: a moderator trains on QA records, dual-preference pairs or labelled prompts, "
                            f"not {r.record_type} records" + (" without a safety label" if isinstance(r, PromptRecord) else ""))
        if prompts and responses:
            raise DataError(f"{r.origin}: labelled prompts and responses in one moderator; train a prompt moderator "
                            "and a response moderator apart")
    return out


def judges(records: list[Record]) -> str:
    """`prompt` when the training records are labelled prompts (a prompt moderator), else `response`."""
    return "prompt" if records and all(isinstance(r, PromptRecord) for r in records) else "response"


def labels(record: QARecord, taxonomy: str) -> dict[str, Any]:
    """Targets and masks: categories count only in the model's taxonomy (a safe record has none in any)."""
    names = get_taxonomy(taxonomy).categories
    known_categories = bool(record.is_safe) or record.taxonomy == taxonomy
    severity = 0 if record.is_safe else record.severity
    return {
        "unsafe": float(not record.is_safe),
        "categories": [float(c in record.harm_categories) for c in names],
        "category_mask": [float(known_categories)] * len(names),
        "severity": -1 if severity is None else severity,
        "severity_mask": float(severity is not None),
    }


def train_moderator(cfg: ModerationConfig) -> dict[str, float]:
    """Train, tune the decision threshold on the evaluation split, save the moderator folder."""
    set_seed(cfg.seed)
    train_raw, eval_raw = load_records(cfg)
    train_qa, eval_qa = qa_records(train_raw), qa_records(eval_raw)
    if not train_qa:
        raise DataError("no safety-labelled responses in the training data")
    n_cat = len(get_taxonomy(cfg.taxonomy))
    meta = ModerationMeta(cfg.backend, cfg.model, cfg.taxonomy, 0.5, cfg.max_length, judges=judges(train_raw))
    model, encode, collate, to_moderator = _backend(cfg, meta, output_size(n_cat))
    train_examples = [{**labels(r, cfg.taxonomy), "x": x} for r, x in zip(train_qa, encode(train_qa))]
    eval_examples = [{**labels(r, cfg.taxonomy), "x": x} for r, x in zip(eval_qa, encode(eval_qa))]
    unsafe_share = sum(e["unsafe"] for e in train_examples) / len(train_examples)
    print(f"moderation: {len(train_examples)} training and {len(eval_examples)} evaluation responses "
          f"({unsafe_share:.0%} unsafe), backend {cfg.backend}, taxonomy {cfg.taxonomy}", flush=True)
    weights = _class_weights(train_examples, n_cat) if cfg.balance_classes else (None, None, None)
    write_run_config(cfg, "moderation")

    def loss(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        u, c, s = split_logits(model_logits(model, batch), n_cat)
        w = [None if t is None else t.to(u.device) for t in weights]
        value = moderation_loss(u, c, s, batch["unsafe"], batch["categories"], batch["category_mask"],
                                batch["severity"], batch["severity_mask"], *w)
        return value, {"train/accuracy": ((u > 0).float() == batch["unsafe"]).float().mean()}

    def evaluate(model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        u, _, s = split_logits(model_logits(model, batch), n_cat)
        severity_ok = (s.argmax(-1) == batch["severity"]).float()
        return {
            "p_unsafe": torch.sigmoid(u),
            "unsafe": batch["unsafe"],
            "severity_correct": torch.where(batch["severity_mask"] > 0, severity_ok, torch.full_like(severity_ok, math.nan)),
        }

    def export(model: nn.Module, folder: Path) -> None:
        moderator = to_moderator(model)
        if eval_examples:
            probs = torch.sigmoid(moderator.logits([dialogue(r) for r in eval_qa], [r.response for r in eval_qa])[:, 0])
            moderator.meta.threshold = tune_threshold(probs.tolist(), [e["unsafe"] for e in eval_examples], cfg.threshold_rule)
        moderator.meta.threshold_rule = cfg.threshold_rule if eval_examples else "fixed"
        moderator.save(folder)
        print(f"decision threshold ({moderator.meta.threshold_rule} on evaluation data): {moderator.meta.threshold:.3f}", flush=True)

    task = Task(model=model, train_examples=train_examples, eval_examples=eval_examples,
                lengths=[_length(e["x"]) for e in train_examples], collate=collate, loss=loss,
                evaluate=evaluate, export=export, summarize=_summarize)
    return train(task, cfg)


def model_logits(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """Head outputs for a collated batch of either backend."""
    if "features" in batch:
        return model(batch["features"]).float()
    return model(batch["input_ids"], batch["attention_mask"]).float()


def _backend(cfg: ModerationConfig, meta: ModerationMeta, size: int):
    """(model, encode records, collate, model -> Moderator) for the chosen backend."""
    if cfg.backend == "embedding":
        encoder = SentenceEncoder(cfg.model, cfg.max_length)
        heads = nn.Linear(encoder.dim, size)

        def encode(records: list[QARecord]) -> list[Tensor]:
            return list(encoder([moderation_text(dialogue(r), r.response) for r in records]))

        def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
            return {"features": torch.stack([e["x"] for e in batch]), **_label_tensors(batch)}

        return heads, encode, collate, lambda m: Moderator(meta, m.eval(), encoder)

    from safealign.models.score import ScoreModel, load_score_tokenizer
    from safealign.models.template import encode_dialogue

    tokenizer = load_score_tokenizer(cfg.model)
    scorer = ScoreModel.from_base(cfg.model, size, kind="moderation", lora=cfg.lora,
                                  gradient_checkpointing=cfg.gradient_checkpointing)

    def encode_tokens(records: list[QARecord]) -> list[list[int]]:
        return [encode_dialogue(tokenizer, dialogue(r), r.response, cfg.max_length) for r in records]

    def collate_tokens(batch: list[dict[str, Any]]) -> dict[str, Any]:
        ids, mask = pad([e["x"] for e in batch], tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask, "num_tokens": int(mask.sum()), **_label_tensors(batch)}

    return scorer, encode_tokens, collate_tokens, lambda m: Moderator(meta, m.eval(), None, tokenizer)


def _label_tensors(batch: list[dict[str, Any]]) -> dict[str, Tensor]:
    return {key: torch.tensor([e[key] for e in batch], dtype=torch.float32)
            for key in ("unsafe", "categories", "category_mask", "severity", "severity_mask")}


def _length(x: Any) -> int:
    return len(x) if isinstance(x, list) else 1


def _class_weights(examples: list[dict[str, Any]], n_cat: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse-frequency weights: positives of unsafe and of each category; severity classes."""
    pos = sum(e["unsafe"] for e in examples)
    unsafe_w = torch.tensor((len(examples) - pos) / max(pos, 1.0)).clamp(0.1, 10.0)
    labelled = [e for e in examples if e["category_mask"][0] > 0]
    counts = torch.tensor([sum(e["categories"][i] for e in labelled) for i in range(n_cat)])
    category_w = ((len(labelled) - counts) / counts.clamp(min=1.0)).clamp(1.0, 20.0)
    levels = torch.tensor([sum(e["severity"] == k and e["severity_mask"] > 0 for e in examples) for k in range(SEVERITIES)], dtype=torch.float32)
    severity_w = (levels.sum() / (SEVERITIES * levels.clamp(min=1.0))).clamp(0.1, 10.0)
    return unsafe_w, category_w, severity_w


def _summarize(values: dict[str, list[float]]) -> dict[str, float]:
    scores = binary_scores(values["p_unsafe"], values["unsafe"], 0.5)
    severity = [v for v in values["severity_correct"] if not math.isnan(v)]
    return {
        "eval/accuracy": scores["accuracy"],
        "eval/f1_unsafe": scores["f1"],
        "eval/precision_unsafe": scores["precision"],
        "eval/recall_unsafe": scores["recall"],
        "eval/severity_accuracy": sum(severity) / len(severity) if severity else math.nan,
    }
