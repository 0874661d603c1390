"""What PPO-style training adds to sampling: critic values and per-token shaped rewards and costs.

Sampling, log-probs and scoring live in `safealign.inference`; the reward and cost models
score the decoded text with their own tokenizers, so they need not share the actor's vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from safealign.inference.sampling import Rollout

# A scorer sees the dialogue, the decoded response and its token ids (for programmatic scores).
Scorer = Callable[[list[list[dict[str, str]]], list[str], list[list[int]]], Tensor]


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
