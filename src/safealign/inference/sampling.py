"""Sampling from a causal LM: one settings dataclass, prompt encoding, `generate`, log-probs.

Prompts are left-padded so every response starts at the same column; sampling goes through
`generate` (KV cache). Each row draws its tokens with its own random generator, seeded from
the settings' seed and the row's key (`row_seed`): a prompt's answer does not depend on the
batch it was sampled in, the batch size or the number of processes. `token_log_probs` reads
the log-probabilities of sampled tokens at the sampling temperature, the distribution they
were drawn from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList

from safealign.inference.settings import SamplingSettings
from safealign.models.template import encode_prompt

__all__ = ["RowSampler", "Rollout", "SamplingSettings", "encode_prompts", "row_seed", "sample", "token_log_probs"]


@dataclass
class Rollout:
    """One batch of sampled episodes; T is the response width, P the prompt width."""

    sequences: Tensor  # size = (B, P + T)
    attention_mask: Tensor  # size = (B, P + T)
    response_mask: Tensor  # size = (B, T), 1 on response tokens (the eos included)
    prompt_width: int
    responses: list[str]
    response_ids: list[list[int]]


def encode_prompts(tokenizer: Any, dialogues: list[list[dict[str, str]]], max_length: int) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask, size = (B, P); long prompts keep their end.

    Each prompt is tokenised as SFT and DPO tokenise it (`encode_prompt`, bos included).
    """
    rows = [encode_prompt(tokenizer, d)[-max_length:] for d in dialogues]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # size = (B, P)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def row_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for one row, from the run's seed and the row's key (e.g. its prompt's index)."""
    digest = hashlib.blake2b(repr((seed, *key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class RowSampler(LogitsProcessor):
    """Draws each row's next token from softmax(truncated logits / T), with that row's own generator.

    Gumbel-max: argmax(l + G) with G = −log(−log U), U ~ Uniform(0, 1), is a draw from
    softmax(l). `generate` runs greedy (its argmax) on the scores returned here, so the
    sampler is exact; each row's noise comes from its own `torch.Generator`, one vector per
    step, so what a row draws depends only on its seed and its own logits. Top-k keeps the k
    largest logits; top-p keeps the smallest set of tokens whose probability reaches p (the
    most likely token always), as in transformers' warpers. `record` keeps every step's
    log-probabilities (of the distribution drawn from) for inspection.
    """

    temperature: float
    top_p: float
    top_k: int
    seeds: Sequence[int]
    record: bool = False
    log_probs: list[Tensor] = field(default_factory=list, init=False, repr=False)
    _generators: list[torch.Generator] = field(default_factory=list, init=False, repr=False)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        logits = scores.float() / self.temperature  # size = (B, V)
        if self.top_k > 0 and self.top_k < logits.size(-1):
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = torch.sort(logits, dim=-1, descending=True)
            probs = ordered.softmax(-1)
            ahead = probs.cumsum(-1) - probs  # mass of the more likely tokens; 0 for the first, which stays
            drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, ahead >= self.top_p)
            logits = logits.masked_fill(drop, float("-inf"))
        if self.record:
            self.log_probs.append(logits.log_softmax(-1))
        if not self._generators:
            self._generators = [torch.Generator(device=logits.device).manual_seed(s) for s in self.seeds]
        if len(self._generators) != logits.size(0):
            raise ValueError(f"RowSampler: {len(self._generators)} seeds for a batch of {logits.size(0)}")
        uniform = torch.stack([torch.rand(logits.size(-1), generator=g, device=logits.device) for g in self._generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(torch.float32).tiny)))
        return logits + gumbel


@torch.no_grad()
def sample(actor: Any, tokenizer: Any, prompt_ids: Tensor, prompt_mask: Tensor, settings: SamplingSettings,
           seeds: Sequence[int] | None = None, sampler: RowSampler | None = None) -> Rollout:
    """Sample one response per prompt (greedy at temperature 0); tokens after the first eos are padding.

    `seeds`: one per row (`row_seed(settings.seed, key)`); when None they are drawn from torch's
    global generator, so `set_seed` still makes a run repeatable. `sampler`: a `RowSampler` to
    use instead of a new one (to read its recorded log-probabilities).
    """
    processors = LogitsProcessorList()
    if settings.temperature > 0:
        if sampler is None:
            if seeds is None:
                seeds = torch.randint(0, 2**62, (prompt_ids.size(0),)).tolist()
            sampler = RowSampler(settings.temperature, settings.top_p, settings.top_k, list(seeds))
        processors.append(sampler)
    out = actor.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=False,  # the argmax of the RowSampler's scores is its draw
        temperature=None,
        top_p=None,
        top_k=None,
        logits_processor=processors,
        repetition_penalty=settings.repetition_penalty,
        max_new_tokens=settings.max_new_tokens,
        min_new_tokens=settings.min_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    width = prompt_ids.size(1)
    generated = out[:, width:]  # size = (B, T)
    is_eos = generated == tokenizer.eos_token_id
    # Keep tokens up to and including the first eos: cumsum counts eos seen *before* a token.
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    response_mask = (before == 0).long()
    generated = torch.where(response_mask.bool(), generated, torch.full_like(generated, tokenizer.pad_token_id))
    sequences = torch.cat([prompt_ids, generated], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    response_ids = [row[m.bool()].tolist() for row, m in zip(generated, response_mask)]
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Rollout(sequences, attention_mask, response_mask, width, texts, response_ids)


def token_log_probs(model: Any, rollout: Rollout, with_entropy: bool = False,
                    temperature: float = 1.0) -> tuple[Tensor, Tensor | None]:
    """log π_T(token) of every response token, size = (B, T); entropy of π_T at each, if asked.

    π_T = softmax(logits / T), the distribution `sample` draws from at temperature T > 0
    (full vocabulary: PPO samples with top_p = 1, top_k = 0 and no repetition penalty), so
    the PPO ratio and the KL refer to what was sampled. T = 0 (greedy) reads π itself.
    """
    mask = rollout.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens
    logits = model(input_ids=rollout.sequences, attention_mask=mask, position_ids=positions, use_cache=False).logits
    logits = logits[:, rollout.prompt_width - 1 : -1].float()  # the logits that predicted each response token
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    log_softmax = torch.log_softmax(logits, dim=-1)
    targets = rollout.sequences[:, rollout.prompt_width :]
    chosen = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1) if with_entropy else None
    return chosen, entropy
