"""Sampling from a causal LM: one settings dataclass, prompt encoding, `generate`, log-probs.

Prompts are left-padded so every response starts at the same column; sampling goes through
`generate` (KV cache). `token_log_probs` reads the log-probabilities of sampled tokens at
the sampling temperature, the distribution they were drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from safealign.inference.settings import SamplingSettings
from safealign.models.template import encode_prompt

__all__ = ["Rollout", "SamplingSettings", "encode_prompts", "sample", "token_log_probs"]


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


@torch.no_grad()
def sample(actor: Any, tokenizer: Any, prompt_ids: Tensor, prompt_mask: Tensor, settings: SamplingSettings) -> Rollout:
    """Sample one response per prompt (greedy at temperature 0); tokens after the first eos are padding."""
    greedy = settings.temperature == 0
    out = actor.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=not greedy,
        temperature=None if greedy else settings.temperature,
        top_p=None if greedy else settings.top_p,
        top_k=None if greedy else settings.top_k,
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
