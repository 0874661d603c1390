"""How steerable a policy is: `eval steer` (ask for each value of one attribute) and `eval adherence` (held-out system messages).

- `eval steer`: the policy answers the same held-out prompts once unconditioned and once per
  requested value of one attribute (verbosity 0..4 by default). Per value: mean answer length
  in words and, with a moderator, the unsafe rate. Spearman's ρ between the requested value
  and the measured length over every answer (verbosity's figure), and the unsafe rate at each
  value against the unconditioned one (harmlessness's figure).
- `eval adherence`: for each checkable system message of a bank split (held-out `test` by
  default), the policy answers the prompts with that message as its system prompt; the
  adherence rate is the share of answers the message's rule accepts (`janus.adheres`).
  Refusal-style messages are asked only on `harmful_prompts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safealign.config import ConfigError, at_least_one
from safealign.data.steer import STEER_ATTRIBUTES, conditioned, with_system
from safealign.evaluate.length import spearman
from safealign.inference.settings import SamplingSettings, validate_device


def write_run(out: Path, metrics: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """metrics.json and answers.jsonl in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@dataclass(kw_only=True)
class SteerEvalConfig(SamplingSettings):
    """`safealign eval steer`: answers at each requested value of one attribute (sampling fields from `SamplingSettings`)."""

    policy: str
    """The policy: alias, folder or hub id (a `train steerlm` output)."""
    prompts: list[str]
    """Held-out prompts."""
    attribute: str = "verbosity"
    """The attribute asked for."""
    values: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """The values asked for (0-4)."""
    fixed: str | None = None
    """Other attribute values asked for at every step, e.g. "helpfulness:4"."""
    attributes_style: Literal["system", "nemo"] = "system"
    """How the values are rendered (as the policy was trained)."""
    moderator: str | None = None
    """A moderator folder: the unsafe rate per value."""
    limit: int | None = None
    """Only the first N prompts."""
    output_dir: str = "runs/eval-steer"
    """Folder for metrics.json and answers.jsonl."""
    batch_size: int = 8
    """Prompts per generate call."""
    device: str = "auto"
    """auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        """Check settings once, early."""
        self.validate_sampling()
        at_least_one(self, "limit", "batch_size")
        if self.attribute not in STEER_ATTRIBUTES:
            raise ConfigError(f"attribute: must be one of {', '.join(STEER_ATTRIBUTES)}, got {self.attribute!r}")
        if not self.values or any(not 0 <= v <= 4 for v in self.values):
            raise ConfigError("values: one or more integers 0-4")
        validate_device(self.device)


def run_steer_eval(cfg: SteerEvalConfig) -> dict[str, Any]:
    """Generate at every value (and unconditioned), measure, write; returns the metrics."""
    from accelerate.utils import set_seed

    from safealign.data.load import load
    from safealign.data.records import dialogue
    from safealign.data.steer import parse_attributes
    from safealign.inference.generate import generate_answers, load_generator
    from safealign.moderation.model import Moderator

    records = load(cfg.prompts).records[: cfg.limit]
    model, tokenizer = load_generator(cfg.policy, device=cfg.device)
    device = next(model.parameters()).device
    judge = Moderator.load(cfg.moderator).to(device) if cfg.moderator else None
    fixed = parse_attributes(cfg.fixed) if cfg.fixed else {}
    rows: list[dict[str, Any]] = []
    per_value: dict[str, dict[str, Any]] = {}
    for value in [None, *cfg.values]:
        set_seed(cfg.seed)
        asked = None if value is None else {**fixed, cfg.attribute: value}
        condition = (lambda r, a=asked: conditioned(r, a, cfg.attributes_style)) if asked else None
        answers = [a for _, a in generate_answers(model, tokenizer, records, cfg.sampling(), cfg.batch_size, condition=condition)]
        flagged = [v.flagged for v in judge.predict([dialogue(r) for r in records], answers)] if judge else [None] * len(answers)
        lengths = [len(a.split()) for a in answers]
        key = "unconditioned" if value is None else str(value)
        per_value[key] = {"answers": len(answers), "mean_words": sum(lengths) / max(1, len(lengths)),
                          "unsafe_rate": (sum(flagged) / len(flagged)) if judge and flagged else None}
        rows += [{"value": value, "prompt": r.prompt, "answer": a, "words": n, "flagged": f}
                 for r, a, n, f in zip(records, answers, lengths, flagged)]
    asked_rows = [r for r in rows if r["value"] is not None]
    metrics: dict[str, Any] = {
        "attribute": cfg.attribute, "policy": cfg.policy, "prompts": len(records), "per_value": per_value,
        "spearman_value_words": spearman([r["value"] for r in asked_rows], [r["words"] for r in asked_rows]),
        "spearman_value_mean_words": spearman([float(v) for v in cfg.values], [per_value[str(v)]["mean_words"] for v in cfg.values]),
    }
    if judge:
        base = per_value["unconditioned"]["unsafe_rate"]
        metrics["unsafe_above_unconditioned"] = [v for v in cfg.values if per_value[str(v)]["unsafe_rate"] > base]
    write_run(Path(cfg.output_dir), metrics, rows)
    return metrics


@dataclass(kw_only=True)
class AdherenceEvalConfig(SamplingSettings):
    """`safealign eval adherence`: how often a policy follows checkable system messages it never trained on."""

    policy: str
    """The policy: alias, folder or hub id."""
    prompts: list[str]
    """Held-out prompts for the format messages (length limits, lists, closing sentences)."""
    harmful_prompts: list[str] = field(default_factory=list)
    """Held-out harmful prompts for the refusal-style messages (left out without them)."""
    messages: str | None = None
    """A system-message bank (JSON Lines); default: the bundled one."""
    split: str = "test"
    """Which messages: test (held out from training), train, or all."""
    limit: int | None = None
    """Only the first N prompts of each set."""
    output_dir: str = "runs/eval-adherence"
    """Folder for metrics.json and answers.jsonl."""
    batch_size: int = 8
    """Prompts per generate call."""
    device: str = "auto"
    """auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        """Check settings once, early."""
        self.validate_sampling()
        at_least_one(self, "limit", "batch_size")
        if self.split not in ("test", "train", "all"):
            raise ConfigError(f"split: test, train or all, got {self.split!r}")
        validate_device(self.device)


def run_adherence_eval(cfg: AdherenceEvalConfig) -> dict[str, Any]:
    """Answer under each checkable message, check, write; returns the metrics."""
    from accelerate.utils import set_seed

    from safealign.data.load import load
    from safealign.inference.generate import generate_answers, load_generator
    from safealign.steer.janus import adheres, load_bank

    messages = [m for m in load_bank(cfg.messages, None if cfg.split == "all" else cfg.split) if m.check is not None]
    if not messages:
        raise ConfigError(f"messages: no checkable message in the {cfg.split} split")
    prompts = load(cfg.prompts).records[: cfg.limit]
    harmful = load(cfg.harmful_prompts).records[: cfg.limit] if cfg.harmful_prompts else []
    model, tokenizer = load_generator(cfg.policy, device=cfg.device)
    per_message: dict[str, Any] = {}
    rows = []
    for message in messages:
        records = harmful if message.check["kind"] == "refusal_style" else prompts
        if not records:
            per_message[message.id] = {"answers": 0, "adherence": None, "note": "no harmful_prompts given"}
            continue
        set_seed(cfg.seed)
        answers = [a for _, a in generate_answers(model, tokenizer, records, cfg.sampling(), cfg.batch_size,
                                                  condition=lambda r, t=message.text: with_system(r, t))]
        ok = [adheres(message.check, a) for a in answers]
        per_message[message.id] = {"answers": len(ok), "adherence": sum(ok) / len(ok), "check": message.check}
        rows += [{"message": message.id, "prompt": r.prompt, "answer": a, "adheres": k} for r, a, k in zip(records, answers, ok)]
    rated = [m["adherence"] for m in per_message.values() if m["adherence"] is not None]
    metrics = {"policy": cfg.policy, "split": cfg.split, "messages": len(rated), "per_message": per_message,
               "adherence": sum(rated) / len(rated) if rated else None}
    write_run(Path(cfg.output_dir), metrics, rows)
    return metrics
