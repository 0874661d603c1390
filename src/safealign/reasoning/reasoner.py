"""ActivationReasoning end to end: detect concepts in the policy's activations, reason over them, steer the answer.

For each prompt: record the prompt's activations at the dictionary's layer, turn them into
propositions (`ConceptDictionary.detect`: concept → above its threshold), forward-chain the
rules over them (`logic.forward_chain`), and answer. When the rules conclude `steer(t)` for
one or more targets, the answer is generated with ‖h‖ · Σ_t factor_t · v̂_t added at the
layer (v̂_t the direction of concept t); otherwise the model answers untouched. Answer-scope
concepts are unknown while the prompt is read (the closed world takes them as false).

Also the configs of `safealign reason concepts | detect | generate`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from safealign.config import ConfigError, at_least_one
from safealign.data.records import DualPreferencePair, PreferencePair, PromptRecord, Record, dialogue
from safealign.data.refusal import is_refusal
from safealign.inference.generate import generate_answers
from safealign.inference.sampling import SamplingSettings
from safealign.inference.settings import PromptConditioning, validate_device
from safealign.reasoning.activations import Activations
from safealign.reasoning.concepts import (
    ConceptDictionary,
    ConceptError,
    concept_name,
    fit_concept,
    fit_probe,
    load_dictionary,
    mean_pooled,
    pooled_codes,
    split_of,
)
from safealign.reasoning.fit import ActivationSettings, Conversation, conversations
from safealign.reasoning.logic import Inference, RuleSet, load_rules
from safealign.reasoning.sae import load_sae
from safealign.reasoning.steering import combined, steering

LABELS = ("categories", "unsafe", "refusal")


@dataclass
class ReasonedAnswer:
    answer: str
    inference: Inference
    steered: list[str]


@dataclass
class ActivationReasoner:
    """A policy with a concept dictionary (at one of its layers) and rules; `answers` reasons, then generates."""

    model: Any
    tokenizer: Any
    dictionary: ConceptDictionary
    rules: RuleSet | None = None
    settings: ActivationSettings = field(default_factory=lambda: ActivationSettings(cache_dir="none"))

    def activations(self, convs: list[Conversation]) -> Activations:
        return self.settings.record(self.model, self.tokenizer, convs, self.dictionary.layer)

    def reason(self, convs: list[Conversation]) -> list[Inference]:
        """Propositions of each conversation, closed under the rules (no rules: the propositions alone)."""
        found = self.dictionary.detect(self.activations(convs))
        rules = self.rules or RuleSet([])
        return [rules.infer(p) for p in found]

    def answers(self, records: list[Record], sampling: SamplingSettings, batch_size: int = 8,
                condition: Callable[[Record], Record] | None = None) -> list[ReasonedAnswer]:
        """Answer every record, steered where the rules say so; row i draws with the seed of key i, steered or not."""
        shown = [condition(r) if condition else r for r in records]
        inferences = self.reason([(dialogue(r), None) for r in shown])
        rules = self.rules or RuleSet([])
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, inference in enumerate(inferences):
            groups.setdefault(tuple(inference.steer_targets), []).append(i)
        texts: list[str] = [""] * len(records)
        for targets, rows in groups.items():
            subset = [records[i] for i in rows]
            run = lambda: [a for _, a in generate_answers(self.model, self.tokenizer, subset, sampling, batch_size,  # noqa: E731
                                                          condition=condition, keys=rows)]
            if targets:
                vector = combined({t: self.dictionary.direction(t) for t in targets}, {t: rules.factor_for(t) for t in targets})
                with steering(self.model, self.dictionary.layer, vector):
                    produced = run()
            else:
                produced = run()
            for i, text in zip(rows, produced):
                texts[i] = text
        return [ReasonedAnswer(t, inf, inf.steer_targets) for t, inf in zip(texts, inferences)]


def reasoner_for(model: Any, tokenizer: Any, concepts: str, rules: str | None) -> ActivationReasoner:
    """A loaded policy with the dictionary in `concepts` and the rule file `rules`; every steer target must be a concept."""
    from safealign.reasoning.activations import decoder_layers
    from safealign.reasoning.logic import steer_target

    dictionary = load_dictionary(concepts)
    ruleset = load_rules(rules) if rules else None
    if ruleset is not None:
        for atom in sorted(ruleset.atoms):
            target = steer_target(atom)
            if target is not None and target not in dictionary.concepts:
                raise ConceptError(f"{ruleset.source}: steer({target}) needs a concept {target!r} in {concepts} "
                                   f"(it has {', '.join(sorted(dictionary.concepts))})")
    hidden = getattr(getattr(model, "config", None), "hidden_size", dictionary.sae.cfg.d_in)
    if hidden != dictionary.sae.cfg.d_in or dictionary.layer >= len(decoder_layers(model)):
        raise ConceptError(f"{concepts}: made for layer {dictionary.layer} with {dictionary.sae.cfg.d_in} dimensions "
                           f"({dictionary.model}); this policy has {len(decoder_layers(model))} layers of {hidden}")
    return ActivationReasoner(model, tokenizer, dictionary, ruleset)


def load_reasoner(concepts: str, rules: str | None, device: str = "auto", model: str | None = None) -> ActivationReasoner:
    """The dictionary's model (or `model`) loaded, with the dictionary and the rule file."""
    from safealign.inference.generate import load_generator

    policy, tokenizer = load_generator(model or load_dictionary(concepts).model, device=device)
    return reasoner_for(policy, tokenizer, concepts, rules)


# --- the concept labels of records -------------------------------------------------------------

def _item_labels(record: Record, which: int | None) -> tuple[bool | None, tuple[str, ...]]:
    """(is_safe, harm categories) of a conversation's item: the prompt, the response, or response `which` of a pair."""
    if isinstance(record, DualPreferencePair):
        return record.is_safe(which or 0), record.harm_categories(which or 0)
    if isinstance(record, PreferencePair):
        return None, ()
    return getattr(record, "is_safe", None), tuple(getattr(record, "harm_categories", ()) or ())


def concept_labels(owners: list[tuple[Record, int | None]], answers: list[str | None],
                   kinds: tuple[str, ...]) -> dict[str, tuple[str, np.ndarray]]:
    """name → (scope, labels per conversation: 1, 0 or −1 unlabelled), from the records' own labels.

    categories: each harm category of the data (a prompt's on prompt records, a response's
    otherwise), positive where listed, negative where the item is labelled (is_safe known)
    and the category absent; unsafe: `unsafe_request` (prompt records) / `unsafe_answer`
    (responses) from is_safe; refusal: the answer opens with a refusal phrase
    (`safealign.data.refusal`).
    """
    n = len(owners)
    out: dict[str, tuple[str, np.ndarray]] = {}
    items = [(("prompt" if isinstance(r, PromptRecord) else "answer"), *_item_labels(r, w)) for r, w in owners]

    def column(name: str, scope: str) -> np.ndarray:
        return out.setdefault(name, (scope, np.full(n, -1, dtype=np.int8)))[1]

    for i, (scope, safe, _) in enumerate(items):
        if "unsafe" in kinds and safe is not None:
            column("unsafe_request" if scope == "prompt" else "unsafe_answer", scope)[i] = int(not safe)
        if "refusal" in kinds and answers[i]:
            column("refusal", "answer")[i] = int(is_refusal(answers[i] or ""))
    if "categories" in kinds:
        seen = sorted({(scope, c) for scope, _, cats in items for c in cats})
        for scope, category in seen:
            values = column(concept_name(category), scope)
            for i, (item_scope, safe, cats) in enumerate(items):
                if item_scope == scope and (safe is not None or cats):
                    values[i] = int(category in cats)
    return out


@dataclass(kw_only=True)
class ConceptsConfig(ActivationSettings):
    """`safealign reason concepts`: a concept dictionary from labelled records and an SAE (with the linear-probe baseline)."""

    sae: str
    """SAE folder (`reason fit-sae` writes OUTPUT_DIR/model); its model and layer are used unless given."""
    model: str | None = None
    """The causal LM whose activations are read (default: the model the SAE was trained on)."""
    data: list[str]
    """Labelled records: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION] entries."""
    format: str | None = None
    """Source format of the data (detected when not given)."""
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    """Which labels become concepts: categories, unsafe, refusal."""
    method: Literal["diff", "tree", "auto"] = "auto"
    """Latent selection: diff (the latents that separate best, by AUC), tree (a small decision tree), auto (the better on validation)."""
    latents: int = 8
    """Latents per concept (diff selection and steering direction)."""
    min_positives: int = 10
    """Concepts with fewer positives (or negatives) in training or validation are left out, and reported."""
    min_balanced_accuracy: float = 0.6
    """Concepts detected no better than this on validation are left out, and reported (one that fires on everything steers everything)."""
    validation: float = 0.2
    """Share of prompts for choosing thresholds and methods."""
    test: float = 0.2
    """Share of prompts held out for the reported detection figures (never used to fit)."""
    limit: int | None = None
    """Only the first N records."""
    seed: int = 0
    """Seed of the prompt split and the trees."""
    out: str = "runs/concepts"
    """The dictionary folder: concepts.json, sae/ and report.json."""

    def validate(self) -> None:
        unknown = set(self.labels) - set(LABELS)
        if unknown or not self.labels:
            raise ConfigError(f"labels: some of {', '.join(LABELS)}; got {self.labels}")
        if not 0 <= self.min_balanced_accuracy <= 1:
            raise ConfigError(f"min_balanced_accuracy: must be in [0, 1], got {self.min_balanced_accuracy}")
        if not 0 < self.validation < 1 or not 0 <= self.test < 1 or self.validation + self.test >= 1:
            raise ConfigError(f"validation ({self.validation}) and test ({self.test}): shares that leave a training split")
        at_least_one(self, "latents", "min_positives", "limit")
        validate_device(self.device)


def run_concepts(cfg: ConceptsConfig) -> dict[str, Any]:
    """Fit the dictionary and the probe baseline; writes DIR/concepts.json, DIR/sae, DIR/report.json; returns the report."""
    from safealign.data.load import load
    from safealign.inference.generate import load_generator

    started = time.perf_counter()
    sae = load_sae(cfg.sae)
    model_name = cfg.model or sae.cfg.meta.get("model")
    if not model_name:
        raise ConfigError(f"model: {cfg.sae} does not say which model it reads; give --model")
    layer = cfg.layer if cfg.layer is not None else sae.cfg.meta.get("layer")
    if layer is None:
        raise ConfigError(f"layer: {cfg.sae} does not say which layer it reads; give --layer")
    records = load(cfg.data, cfg.format).records[: cfg.limit]
    convs, owners = conversations(records)
    model, tokenizer = load_generator(model_name, device=cfg.device)
    acts = cfg.record(model, tokenizer, convs, int(layer))
    if acts.values.size(1) != sae.cfg.d_in:
        raise ConfigError(f"sae: {cfg.sae} reads {sae.cfg.d_in} dimensions; layer {layer} of {model_name} has {acts.values.size(1)}")
    labels = concept_labels(owners, [a for _, a in convs], tuple(cfg.labels))
    split = np.array([split_of(r.prompt, cfg.validation, cfg.test, cfg.seed) for r, _ in owners])
    pooled: dict[str, Any] = {}
    means: dict[str, Any] = {}
    concepts, report, skipped = {}, {}, {}
    for name, (scope, values) in sorted(labels.items()):
        labelled = values >= 0
        y = values == 1
        counts = {part: (int((y & labelled & (split == part)).sum()), int((~y & labelled & (split == part)).sum()))
                  for part in ("train", "validation", "test")}
        if min(min(counts["train"]), min(counts["validation"])) < cfg.min_positives:
            skipped[name] = counts
            continue
        if scope not in pooled:
            pooled[scope], means[scope] = pooled_codes(sae, acts, scope), mean_pooled(acts, scope)
        rows = np.nonzero(labelled)[0]
        concept = fit_concept(name, scope, pooled[scope][rows], y[rows], split[rows], cfg.method, cfg.latents, cfg.seed)
        if concept.validation["balanced_accuracy"] < cfg.min_balanced_accuracy:
            skipped[name] = {**counts, "validation_balanced_accuracy": concept.validation["balanced_accuracy"]}
            continue
        concepts[name] = concept
        report[name] = {"scope": scope, "method": concept.method, "counts": counts, "dictionary": concept.test,
                        "probe": fit_probe(means[scope][rows], y[rows], split[rows], cfg.seed)["test"]}
    if not concepts:
        raise ConceptError(f"no concept had {cfg.min_positives} positives and negatives in training and validation "
                           f"and a validation balanced accuracy of {cfg.min_balanced_accuracy}: {skipped}")
    dictionary = ConceptDictionary(sae, concepts, model_name, int(layer),
                                   {"data": cfg.data, "labels": cfg.labels, "split": {"validation": cfg.validation, "test": cfg.test,
                                                                                       "seed": cfg.seed}})
    out = dictionary.save(cfg.out)
    summary = {"concepts": report, "skipped": skipped, "conversations": len(convs), "seconds": time.perf_counter() - started}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    return summary


@dataclass(kw_only=True)
class DetectConfig:
    """`safealign reason detect`: the concepts (and, with rules, what follows) of every conversation in a file."""

    concepts: str
    """Concept dictionary folder (`reason concepts`)."""
    data: list[str]
    """Records: prompts, QA records or pairs (each response is a conversation)."""
    rules: str | None = None
    """Rule file (YAML); derived facts, steering targets and proofs are added."""
    format: str | None = None
    """Source format of the data (detected when not given)."""
    out: str = "runs/detect.jsonl"
    """JSON Lines: {origin, response, propositions, derived, steer, proof, conflicts}."""
    limit: int | None = None
    """Only the first N records."""
    tokens: bool = False
    """Also write each conversation's tokens with the concepts active at each."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        at_least_one(self, "limit")
        validate_device(self.device)


def run_detect(cfg: DetectConfig) -> dict[str, Any]:
    from safealign.data.load import load

    reasoner = load_reasoner(cfg.concepts, cfg.rules, cfg.device)
    records = load(cfg.data, cfg.format).records[: cfg.limit]
    convs, owners = conversations(records)
    acts = reasoner.activations(convs)
    found = reasoner.dictionary.detect(acts)
    rules = reasoner.rules or RuleSet([])
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with open(out, "w", encoding="utf-8") as f:
        for i, ((record, which), props) in enumerate(zip(owners, found)):
            inference = rules.infer(props)
            derived = {a: d.value for a, d in inference.derived.items()}
            for name, value in {**props, **derived}.items():
                counts[name] = counts.get(name, 0) + int(value)
            row: dict[str, Any] = {"origin": record.origin, "response": which, "propositions": props, "derived": derived,
                                   "steer": inference.steer_targets,
                                   "proof": {a: inference.proof(a) for a in inference.derived}, "conflicts": inference.conflicts}
            if cfg.tokens:
                lo, hi = int(acts.offsets[i]), int(acts.offsets[i + 1])
                masks = reasoner.dictionary.token_masks(acts, i)
                ids = _conversation_ids(reasoner, convs[i])[1 : 1 + hi - lo]
                row["tokens"] = [{"token": reasoner.tokenizer.decode([t]), "concepts": [n for n, m in masks.items() if m[j]]}
                                 for j, t in enumerate(ids)]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"conversations": len(convs), "true": counts, "out": str(out)}


def _conversation_ids(reasoner: ActivationReasoner, conv: Conversation) -> list[int]:
    from safealign.reasoning.activations import encode_conversation

    s = reasoner.settings
    return encode_conversation(reasoner.tokenizer, conv[0], conv[1], s.max_prompt_tokens, s.max_answer_tokens)[0]


@dataclass(kw_only=True)
class ReasonGenerateConfig(SamplingSettings, PromptConditioning):
    """`safealign reason generate`: answers with ActivationReasoning on (sampling fields from `SamplingSettings`)."""

    concepts: str
    """Concept dictionary folder (`reason concepts`); its model answers unless `model` is given."""
    rules: str
    """Rule file (YAML): what the detected concepts imply, and when to steer(target)."""
    prompts: list[str]
    """Prompt records: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION]; one entry per flag."""
    model: str | None = None
    """The policy, when it is not the dictionary's model (it must have the same hidden size at that layer)."""
    format: str | None = None
    """Source format of the prompts (detected when not given)."""
    out: str = "runs/reason/answers.jsonl"
    """JSON Lines of {prompt, category, response, steered, fired, propositions}."""
    batch_size: int = 8
    """Prompts per generate call."""
    limit: int | None = None
    """Only the first N prompts."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        self.validate_sampling()
        self.validate_conditioning()
        at_least_one(self, "batch_size", "limit")
        validate_device(self.device)


def run_reason_generate(cfg: ReasonGenerateConfig) -> dict[str, Any]:
    from accelerate.utils import set_seed

    from safealign.data.load import load

    records = load(cfg.prompts, cfg.format).records[: cfg.limit]
    reasoner = load_reasoner(cfg.concepts, cfg.rules, cfg.device, cfg.model)
    set_seed(cfg.seed)
    started = time.perf_counter()
    done = reasoner.answers(records, cfg.sampling(), cfg.batch_size, cfg.conditioning())
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for record, answer in zip(records, done):
            f.write(json.dumps({"prompt": record.prompt, "category": getattr(record, "category", None), "response": answer.answer,
                                "steered": answer.steered, "fired": answer.inference.fired,
                                "propositions": answer.inference.values, "origin": record.origin}, ensure_ascii=False) + "\n")
    return {"answers": len(done), "steered": sum(bool(a.steered) for a in done), "seconds": time.perf_counter() - started,
            "out": str(out)}
