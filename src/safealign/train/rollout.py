"""Rollouts for PPO-style training: sample, score, and shape per-token rewards and costs.

Prompts are left-padded so every response starts at the same column; sampling goes through
`generate` (KV cache). Log-probabilities of the sampled tokens are computed under the
actor (π_old) and the reference; the reward and cost models score the decoded text with
their own tokenizers, so they need not share the actor's vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from safealign.models.template import encode_dialogue, encode_prompt

# A scorer sees the dialogue, the decoded response and its token ids (for programmatic scores).
Scorer = Callable[[list[list[dict[str, str]]], list[str], list[list[int]]], Tensor]


@dataclass
class SamplingSettings:
    """How responses are sampled."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    top_k: int = 0  # 0 = off; generate's default of 50 would make PPO sample from a truncated π


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


def critic_values(critic: Any, rollout: Rollout) -> Tensor:
    """V(s_t) before each response token, size = (B, T), from a per-token score model."""
    values = critic(rollout.sequences, rollout.attention_mask, per_token=True)[..., 0]  # size = (B, P + T)
    return values[:, rollout.prompt_width - 1 : -1].float()


def shaped_rewards(score: Tensor, kl: Tensor, mask: Tensor, beta: float, sign: float) -> Tensor:
    """Per-token signal: sign·β·kl_t on every token, plus the sequence score at the last one.

    Reward: sign = −1 (r̂_t = −β·kl_t); cost: sign = +1 (ĉ_t = +β·kl_t), as in Safe RLHF.
    score: size = (B,); kl, mask: size = (B, T).
    """
    out = sign * beta * kl * mask
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask.bool()  # the final valid token
    return out + last * score.unsqueeze(-1)


class ModelScorer:
    """A reward or cost model folder as a scorer: re-tokenises the text with its own tokenizer."""

    def __init__(self, folder: str | Path, max_length: int = 1024, batch_size: int = 16, dtype: str = "float32") -> None:
        from safealign.models.score import ScoreModel, load_score_tokenizer

        self.model = ScoreModel.from_pretrained(folder, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = load_score_tokenizer(folder)
        self.max_length = max_length
        self.batch_size = batch_size

    def to(self, device: torch.device) -> ModelScorer:
        """Move the model."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, dialogues: list[list[dict[str, str]]], responses: list[str], response_ids: list[list[int]]) -> Tensor:
        from safealign.evaluate.preference import score_texts

        sequences = [encode_dialogue(self.tokenizer, d, r, self.max_length) for d, r in zip(dialogues, responses)]
        return torch.tensor(score_texts(self.model, sequences, self.tokenizer.pad_token_id, self.batch_size))
