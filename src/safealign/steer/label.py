"""`safealign label attributes`: SteerLM attribute values for any responses, from a model or measured directly.

Each response becomes an attribute record (canonical JSON Lines). Where the values come from,
in order (a later source fills only what an earlier one left empty, except `measure`):
- the record's own values (HelpSteer rows);
- `model`: an attribute model (`train attributes`) predicts the five HelpSteer attributes;
- `reward`: helpfulness from the quintiles of a reward model's scores over this corpus;
- harmlessness from the record's safety labels (`harmlessness_from_safety`), else from the
  quintiles of a cost model's costs (`cost`; more cost, less harmless);
- `measure: [verbosity]` (the default): verbosity from the quintiles of the response lengths
  in words over this corpus, replacing any other value (a length is measured, not guessed).
Every record's `meta.attributes_from` says which source gave each value, and the cut points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safealign.config import ConfigError
from safealign.data.derive import pair_to_qa
from safealign.data.errors import DataError
from safealign.data.records import ATTRIBUTES, AttributeRecord, DualPreferencePair, PreferencePair, QARecord, Record, dialogue
from safealign.data.steer import harmlessness_from_safety, quantile_levels
from safealign.inference.settings import validate_device

MEASURES = ("verbosity",)


@dataclass(kw_only=True)
class LabelAttributesConfig:
    """`safealign label attributes`: attribute values for every response in `data`."""

    data: list[str]
    """Responses: QA, attribute, dual-preference (both responses) or preference records (both sides)."""
    to: str | None = None
    """Output: canonical attribute records (.jsonl, .jsonl.gz or .parquet); default OUTPUT_DIR/attributes.jsonl."""
    output_dir: str = "runs/label-attributes"
    """Folder of the default output (a pipeline stage sets it)."""
    model: str | None = None
    """An attribute model folder (from `train attributes`): the five HelpSteer attributes."""
    reward: str | None = None
    """A reward model folder: helpfulness from its score quintiles (where no other source gave one)."""
    cost: str | None = None
    """A cost model folder: harmlessness from its cost quintiles (where the records have no safety labels)."""
    measure: list[str] = field(default_factory=lambda: ["verbosity"])
    """Attributes measured from the text itself: verbosity (length quintiles, in words)."""
    format: str | None = None
    """Source format (detected when not given)."""
    skip_invalid: bool = False
    """Go on past bad records (counted)."""
    limit: int | None = None
    """Only the first N responses."""
    batch_size: int = 16
    """Sequences per scoring pass."""
    max_length: int = 512
    """Tokens per scored sequence."""
    threads: int | None = None
    """torch CPU threads."""
    device: str = "auto"
    """auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        """Check settings once, early."""
        unknown = [m for m in self.measure if m not in MEASURES]
        if unknown:
            raise ConfigError(f"measure: {unknown[0]!r}: can be measured directly: {', '.join(MEASURES)}")
        if not self.data:
            raise ConfigError("data: required")
        validate_device(self.device)


def responses_of(records: list[Record]) -> tuple[list[AttributeRecord], list[tuple[bool | None, int | None]]]:
    """One attribute record per response (values the source has kept) and its (is_safe, severity)."""
    out: list[AttributeRecord] = []
    safety: list[tuple[bool | None, int | None]] = []
    for record in records:
        if isinstance(record, DualPreferencePair):
            parts: list[Record] = list(pair_to_qa(record))
        elif isinstance(record, PreferencePair):
            parts = [QARecord(prompt=record.prompt, response=text, system=record.system, context=record.context,
                              origin=f"{record.origin}:{side}") for side, text in (("chosen", record.chosen), ("rejected", record.rejected))]
        else:
            parts = [record]
        for part in parts:
            if isinstance(part, AttributeRecord):
                out.append(part)
                safety.append((None, None))
            elif isinstance(part, QARecord):
                out.append(AttributeRecord(prompt=part.prompt, response=part.response, system=part.system, context=part.context,
                                           source=part.source, origin=part.origin))
                safety.append((part.is_safe, part.severity))
            else:
                raise DataError(f"{part.origin}: a {part.record_type} record has no response to label")
    return out, safety


def label_attributes(records: list[AttributeRecord], safety: list[tuple[bool | None, int | None]], cfg: LabelAttributesConfig,
                     predict: Any = None, reward: Any = None, cost: Any = None) -> list[AttributeRecord]:
    """Fill every record's attributes (see the module text); `predict`, `reward`, `cost` map (dialogues, responses) to scores."""
    sources: list[dict[str, str]] = [{} for _ in records]
    for i, r in enumerate(records):
        for name in (*ATTRIBUTES, "harmlessness"):
            if getattr(r, name) is not None:
                sources[i][name] = "source"
    dialogues = [dialogue(r) for r in records]
    responses = [r.response for r in records]
    if predict is not None:
        predicted = predict(dialogues, responses)  # size = (N, 5)
        for i, r in enumerate(records):
            for j, name in enumerate(ATTRIBUTES):
                if getattr(r, name) is None:
                    setattr(r, name, round(min(4.0, max(0.0, float(predicted[i][j]))), 3))
                    sources[i][name] = f"model {cfg.model}"
    cuts: dict[str, list[float]] = {}
    if reward is not None:
        levels, cuts["helpfulness"] = quantile_levels(reward(dialogues, responses, []).tolist())
        for i, r in enumerate(records):
            if r.helpfulness is None:
                r.helpfulness, sources[i]["helpfulness"] = float(levels[i]), f"reward quintiles {cfg.reward}"
    for i, r in enumerate(records):
        if r.harmlessness is None and (value := harmlessness_from_safety(*safety[i])) is not None:
            r.harmlessness, sources[i]["harmlessness"] = float(value), "safety labels"
    if cost is not None:
        levels, cuts["harmlessness"] = quantile_levels(cost(dialogues, responses, []).tolist(), reverse=True)
        for i, r in enumerate(records):
            if r.harmlessness is None:
                r.harmlessness, sources[i]["harmlessness"] = float(levels[i]), f"cost quintiles {cfg.cost}"
    if "verbosity" in cfg.measure:
        levels, cuts["verbosity"] = quantile_levels([len(r.response.split()) for r in records])
        for i, r in enumerate(records):
            r.verbosity, sources[i]["verbosity"] = float(levels[i]), "length quintiles (words)"
    for i, r in enumerate(records):
        r.meta = {**(r.meta or {}), "attributes_from": sources[i], "cuts": cuts}
    return records


def run_label_attributes(cfg: LabelAttributesConfig) -> dict[str, Any]:
    """Load, label and write; returns counts and the output path."""
    import torch

    from safealign.data.load import load
    from safealign.data.write import write_records
    from safealign.inference.scoring import ModelScorer
    from safealign.models.loading import resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    loaded = load(cfg.data, cfg.format, strict=not cfg.skip_invalid)
    records, safety = responses_of(loaded.records)
    records, safety = records[: cfg.limit], safety[: cfg.limit]
    device = resolve_device(cfg.device)
    predict = _attribute_predictor(cfg, device) if cfg.model else None
    reward = ModelScorer(cfg.reward, cfg.max_length, cfg.batch_size).to(device) if cfg.reward else None
    cost = ModelScorer(cfg.cost, cfg.max_length, cfg.batch_size).to(device) if cfg.cost else None
    label_attributes(records, safety, cfg, predict, reward, cost)
    out = Path(cfg.to) if cfg.to else Path(cfg.output_dir) / "attributes.jsonl"
    write_records(records, out)
    filled = {name: sum(getattr(r, name) is not None for r in records) for name in (*ATTRIBUTES, "harmlessness")}
    return {"read": loaded.report.read, "rejected": loaded.report.rejected, "responses": len(records), "filled": filled, "out": str(out)}


def _attribute_predictor(cfg: LabelAttributesConfig, device: Any) -> Any:
    """(dialogues, responses) → the attribute model's five values per response, batched by length, with a progress bar."""
    from rich.progress import Progress

    from safealign.inference.scoring import score_rows
    from safealign.models.score import ScoreModel, load_score_tokenizer
    from safealign.models.template import encode_dialogue

    model = ScoreModel.from_pretrained(cfg.model).eval().requires_grad_(False).to(device)
    tokenizer = load_score_tokenizer(cfg.model)

    def predict(dialogues: list[list[dict[str, str]]], responses: list[str]) -> list[list[float]]:
        sequences = [encode_dialogue(tokenizer, d, r, cfg.max_length) for d, r in zip(dialogues, responses)]
        with Progress(transient=True) as progress:
            task = progress.add_task("attributes", total=len(sequences))
            return score_rows(model, sequences, tokenizer.pad_token_id, cfg.batch_size,
                              on_batch=lambda n: progress.advance(task, n))  # size = (N, 5)

    return predict
