"""Fit a top-k SAE on a model's residual stream (`safealign reason fit-sae`), on the shared training loop.

Records become conversations (`conversations`: a prompt record is its prompt, a QA record
the prompt and its response, a pair each of its two responses), their activations at the
layer are recorded (and cached), the conversations are split train/validation by prompt,
and the loop trains the SAE on the tokens of the chosen scope. The folder `OUTPUT_DIR/model`
is the SAE (`cfg.json`, `sae.safetensors`); `final_metrics.json` has the validation figures:
`eval/fve` (fraction of variance explained) and `eval/dead_latents` (latents that never
reach a top k on the validation tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from safealign.config import ConfigError
from safealign.data.records import DualPreferencePair, PreferencePair, PromptRecord, Record, dialogue
from safealign.reasoning.activations import Activations, collect_activations, decoder_layers, layer_index
from safealign.reasoning.concepts import split_of
from safealign.reasoning.sae import SAEConfig, TopKSAE
from safealign.train.config import LoopConfig, write_run_config
from safealign.train.loop import Task, TrainingError, train

AUX_ALPHA = 1.0 / 32
Conversation = tuple[list[dict[str, str]], str | None]


def conversations(records: list[Record]) -> tuple[list[Conversation], list[tuple[Record, int | None]]]:
    """(dialogue, answer or None) per conversation, and (record, response index) of each: one per response."""
    found: list[Conversation] = []
    owners: list[tuple[Record, int | None]] = []
    for record in records:
        d = dialogue(record)
        if isinstance(record, PromptRecord):
            found.append((d, None))
            owners.append((record, None))
        elif isinstance(record, DualPreferencePair):
            for i in (0, 1):
                found.append((d, record.response(i)))
                owners.append((record, i))
        elif isinstance(record, PreferencePair):
            found += [(d, record.chosen), (d, record.rejected)]
            owners += [(record, 0), (record, 1)]
        else:
            found.append((d, record.response))  # type: ignore[union-attr]
            owners.append((record, None))
    return found, owners


@dataclass(kw_only=True)
class ActivationSettings:
    """Where activations come from: the model, the layer, the token budget, the cache."""

    model: str = "smollm2-135m-instruct"
    """The causal LM whose residual stream is read: an offline alias, a folder or a hub id."""
    layer: int | None = None
    """Decoder layer (0-based; negative counts from the end); default: the middle one."""
    activation_batch_size: int = 16
    """Conversations per forward pass when recording activations."""
    max_prompt_tokens: int = 256
    """Prompt tokens kept (its end)."""
    max_answer_tokens: int = 128
    """Answer tokens kept (its start)."""
    cache_dir: str | None = None
    """Activation cache (default: $SAFEALIGN_HOME/activations); "none" turns it off."""
    device: str = "auto"
    """auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""

    def cache(self) -> str | None:
        if self.cache_dir == "none":
            return None
        if self.cache_dir:
            return self.cache_dir
        from safealign.models.registry import safealign_home

        return str(safealign_home() / "activations")

    def record(self, model: Any, tokenizer: Any, convs: list[Conversation], layer: int) -> Activations:
        return collect_activations(model, tokenizer, convs, layer, self.activation_batch_size, self.cache(),
                                   self.max_prompt_tokens, self.max_answer_tokens)


def default_layer(model: Any) -> int:
    return len(decoder_layers(model)) // 2


@dataclass(kw_only=True)
class FitSAEConfig(ActivationSettings, LoopConfig):
    """`safealign reason fit-sae`: a top-k SAE on one layer's activations (every loop setting applies; batches are tokens)."""

    data: list[str]
    """Records whose conversations are recorded: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION] entries."""
    format: str | None = None
    """Source format of the data (detected when not given)."""
    limit: int | None = None
    """Only the first N records."""
    num_latents: int | None = None
    """SAE latents (default: 8 × the hidden size)."""
    k: int = 32
    """Latents active per token (top-k)."""
    scope: Literal["prompt", "answer", "conversation"] = "conversation"
    """Which tokens train the SAE."""
    dead_after: int | None = None
    """Tokens without firing after which a latent is dead (aux loss); default: a tenth of the training tokens, at least 1,000."""
    validation_split: float = 0.1
    """Share of the conversations (by prompt) held out for the validation figures."""
    output_dir: str = "runs/sae"
    per_device_batch_size: int = 1024
    learning_rate: float = 5e-4
    epochs: float = 5.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 0.0
    group_by_length: bool = False
    eval_every: int = 0
    save_every: int = 0

    def validate(self) -> None:
        super().validate()
        if not self.data:
            raise ConfigError("data: required (one or more PATH_OR_NAME[:PROPORTION])")
        if not 0 < self.validation_split < 1:
            raise ConfigError(f"validation_split: must be in (0, 1), got {self.validation_split}")
        if self.k < 1 or (self.num_latents is not None and self.num_latents < self.k):
            raise ConfigError(f"k: must be in 1 … num_latents, got k={self.k}, num_latents={self.num_latents}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be at least 1, got {self.limit}")


def sae_task(sae: TopKSAE, train_values: Tensor, eval_values: Tensor, dead_after: int) -> Task:
    """The loop's task: examples are token rows; loss FVU + α·aux-k; eval FVE and dead latents."""
    eval_mean = eval_values.mean(0)
    fired = torch.zeros(sae.cfg.num_latents, dtype=torch.bool)

    def unwrap(model: nn.Module) -> TopKSAE:
        return getattr(model, "module", model)

    def collate(rows: list[tuple[str, int]]) -> dict[str, Any]:
        source = train_values if rows[0][0] == "train" else eval_values
        return {"x": source[torch.tensor([i for _, i in rows])]}

    def loss(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        inner = unwrap(model)
        dead = inner.since_fired >= dead_after
        out = model(batch["x"], dead)
        inner.note_fired(out.top_acts.detach(), out.top_indices)
        return out.fvu + AUX_ALPHA * out.auxk_loss, {"train/fvu": out.fvu.detach(), "train/auxk": out.auxk_loss.detach(),
                                                     "train/dead": dead.float().sum()}

    def evaluate(model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["x"]
        out = model(x)
        fired[out.top_indices[out.top_acts > 0].cpu()] = True
        return {"error": (x - out.reconstruction).pow(2).sum(-1), "variance": (x - eval_mean.to(x.device)).pow(2).sum(-1)}

    def summarize(values: dict[str, list[float]]) -> dict[str, float]:
        dead = float((~fired).sum())
        fired.zero_()
        fve = 1.0 - sum(values["error"]) / max(sum(values["variance"]), 1e-12)
        sae.cfg.meta.update({"fve": fve, "dead_latents": dead})  # the loop exports after its last evaluation
        return {"eval/fve": fve, "eval/dead_latents": dead, "eval/tokens": float(len(values["error"]))}

    return Task(model=sae, train_examples=[("train", i) for i in range(len(train_values))],
                eval_examples=[("eval", i) for i in range(len(eval_values))], lengths=[1] * len(train_values),
                collate=collate, loss=loss, evaluate=evaluate, export=lambda model, path: unwrap(model).save(path),
                summarize=summarize)


def train_sae(cfg: FitSAEConfig) -> dict[str, float]:
    """Record activations, train the SAE, save it; returns the final validation metrics."""
    from accelerate.utils import set_seed

    from safealign.data.load import load
    from safealign.inference.generate import load_generator

    if cfg.dry_run:
        return {}
    set_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    records = load(cfg.data, cfg.format).records[: cfg.limit]
    convs, owners = conversations(records)
    model, tokenizer = load_generator(cfg.model, device=cfg.device)
    layer = layer_index(model, cfg.layer if cfg.layer is not None else default_layer(model))
    acts = cfg.record(model, tokenizer, convs, layer)
    del model
    splits = np.array([split_of(r.prompt, cfg.validation_split, 0.0, cfg.seed) for r, _ in owners])
    token_split = splits[acts.owners().numpy()]
    keep = acts.token_mask(cfg.scope).numpy()
    train_values = acts.values[torch.from_numpy(keep & (token_split == "train"))]
    eval_values = acts.values[torch.from_numpy(keep & (token_split != "train"))]
    if len(eval_values) == 0 or len(train_values) < cfg.per_device_batch_size:
        raise TrainingError(f"{len(train_values)} training and {len(eval_values)} validation tokens in scope {cfg.scope!r}: "
                            f"too few (a batch is {cfg.per_device_batch_size} tokens); give more data or a smaller batch")
    d_in = acts.values.size(1)
    latents = cfg.num_latents or 8 * d_in
    meta = {"model": cfg.model, "layer": layer, "scope": cfg.scope, "train_tokens": len(train_values),
            "validation_tokens": len(eval_values), "conversations": len(convs)}
    sae = TopKSAE(SAEConfig(d_in, latents, cfg.k, True, meta))
    with torch.no_grad():  # b_dec starts at the data's centre
        sae.b_dec.copy_(train_values.median(0).values)
    write_run_config(cfg, "sae")
    dead_after = cfg.dead_after or max(1000, len(train_values) // 10)
    return train(sae_task(sae, train_values, eval_values, dead_after), cfg)
