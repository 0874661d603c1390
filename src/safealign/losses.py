"""Losses and metrics as pure tensor functions (no trainer state), each with its equation.

Sign conventions (DESIGN §2): higher reward = more helpful; cost > 0 = unsafe, cost < 0 =
safe, and the safer response of a pair has the lower cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bradley_terry_loss(better: Tensor, worse: Tensor, regularization: float = 0.001) -> Tensor:
    """Pairwise reward loss (Safe RLHF, eq. 5 with a score regulariser).

    L = −mean log σ(r_w − r_l) + μ · mean(r²), the mean of r² taken over both responses.

    better, worse: size = (B,) scores of the preferred and the other response.
    """
    scores = torch.cat([better, worse])
    return -F.logsigmoid(better - worse).mean() + regularization * scores.square().mean()


def cost_loss(
    safer: Tensor,
    unsafer: Tensor,
    safer_sign: Tensor,
    unsafer_sign: Tensor,
    regularization: float = 0.001,
) -> Tensor:
    """Cost-model loss with safety-sign terms (Safe RLHF, eq. 6).

    With s = +1 for a response labelled unsafe and −1 for one labelled safe,
    L = mean[−log σ(c_u − c_s) − log σ(s_u·c_u) − log σ(s_s·c_s)] + μ · mean(c²).
    A sign of 0 means "no safety label" (e.g. HH-RLHF harmless pairs): that term is left
    out rather than contributing the constant log 2 that s = 0 would give.

    safer, unsafer: size = (B,) costs; safer_sign, unsafer_sign: size = (B,) in {−1, 0, +1}.
    """
    pairwise = -F.logsigmoid(unsafer - safer)
    sign_terms = -F.logsigmoid(unsafer_sign * unsafer) * (unsafer_sign != 0) - F.logsigmoid(
        safer_sign * safer
    ) * (safer_sign != 0)
    scores = torch.cat([safer, unsafer])
    return (pairwise + sign_terms).mean() + regularization * scores.square().mean()


def masked_regression_loss(predicted: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the observed labels only (HelpSteer attributes; missing ignored).

    L = Σ m·(ŷ − y)² / max(1, Σ m).   predicted, target, mask: size = (B, K).
    """
    mask = mask.to(predicted.dtype)
    return ((predicted - target).square() * mask).sum() / mask.sum().clamp(min=1.0)


def pairwise_accuracy(higher: Tensor, lower: Tensor) -> Tensor:
    """Share of pairs where the score that should be higher is strictly higher."""
    return (higher > lower).float().mean()


def sign_accuracy(scores: Tensor, signs: Tensor) -> Tensor:
    """Share of labelled responses (sign ≠ 0) whose cost sign agrees with the label (+1 unsafe, −1 safe)."""
    labelled = signs != 0
    if not labelled.any():
        return torch.tensor(float("nan"))
    return ((scores[labelled] > 0) == (signs[labelled] > 0)).float().mean()


# --- preference optimisation -------------------------------------------------------------


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float = 0.1,
    margin: Tensor | float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023, eq. 7), with an optional per-pair margin.

    L = −mean log σ(β[(log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)] − margin)

    Inputs are sequence log-probabilities, size = (B,). Returns (loss, implicit rewards of
    chosen, of rejected), the rewards being β(log π − log π_ref), detached.
    """
    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward - margin).mean()
    return loss, chosen_reward.detach(), rejected_reward.detach()


def safe_dpo_margin(chosen_unsafe: Tensor, rejected_unsafe: Tensor, delta: float) -> Tensor:
    """SafeDPO's safety margin (Kim et al. 2025): Δ·(u_l − u_w), u = 1 for an unsafe response.

    A pair whose chosen response is safe and rejected one unsafe must be separated by an
    extra Δ; a pair of two safe or two unsafe responses gets none. Unlabelled → u = 0.
    """
    return delta * (rejected_unsafe.float() - chosen_unsafe.float())


# --- policy gradient (PPO, PPO-Lagrangian) ---------------------------------------------------


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response tokens (Schulman et al. 2016).

    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γλ·A_{t+1}, with V and A zero past the last
    valid token; returns (advantages, returns = A + V). rewards, values, mask: size = (B, T),
    mask 1 on response tokens (a right-padded suffix of zeros).
    """
    mask = mask.to(rewards.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def ppo_policy_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2) -> Tensor:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), averaged over valid tokens.

    L = −mean_t min(ρ_t·A_t, clip(ρ_t, 1 − ε, 1 + ε)·A_t),  ρ_t = exp(log π − log π_old).
    """
    ratio = torch.exp(log_probs - old_log_probs)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
    return -masked_mean(surrogate, mask)


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 5.0) -> Tensor:
    """Clipped value loss: ½·mean_t max((V − G)², (V_old + clip(V − V_old, ±c) − G)²)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = torch.max((values - returns).square(), (clipped - returns).square())
    return 0.5 * masked_mean(loss, mask)


def lagrangian_advantage(reward_advantages: Tensor, cost_advantages: Tensor, lagrange: float | Tensor) -> Tensor:
    """Safe RLHF's actor advantage: A = (A_R − λ·A_C) / (1 + λ)."""
    return (reward_advantages - lagrange * cost_advantages) / (1.0 + lagrange)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over positions where mask is 1."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# --- moderation ------------------------------------------------------------------------------


def moderation_loss(
    unsafe_logit: Tensor,
    category_logits: Tensor,
    severity_logits: Tensor,
    unsafe: Tensor,
    categories: Tensor,
    category_mask: Tensor,
    severity: Tensor,
    severity_mask: Tensor,
    unsafe_pos_weight: Tensor | None = None,
    category_pos_weight: Tensor | None = None,
    severity_weight: Tensor | None = None,
) -> Tensor:
    """Unsafe BCE + multi-label category BCE + severity cross-entropy, each over labelled records.

    L = BCE_w(u, y) + Σ m_c·BCE_w(c, y_c) / Σ m_c + Σ m_s·CE_w(s, y_s) / Σ m_s,
    where the positive weights (and severity class weights) counter class imbalance and the
    masks drop labels the source does not have (e.g. BeaverTails categories under the
    PKU-SafeRLHF taxonomy, or severity of BeaverTails records).
    unsafe_logit, unsafe: (B,); category_*: (B, C); severity_logits: (B, 4); severity, severity_mask: (B,).
    """
    loss = F.binary_cross_entropy_with_logits(unsafe_logit, unsafe.float(), pos_weight=unsafe_pos_weight)
    per_category = F.binary_cross_entropy_with_logits(category_logits, categories.float(), pos_weight=category_pos_weight, reduction="none")
    loss = loss + masked_mean(per_category, category_mask)
    per_record = F.cross_entropy(severity_logits, severity.long().clamp(min=0), weight=severity_weight, reduction="none")
    return loss + masked_mean(per_record, severity_mask)


def length_adjusted_reward(reward: Tensor, lengths: Tensor, max_new_tokens: int, penalty: float = 0.0,
                           long_outputs: str = "keep") -> Tensor:
    """Sequence rewards with the length interventions of "A Long Way to Go" (Singhal et al. 2023).

    reward − penalty · len / max_new_tokens; with `long_outputs: zero`, an answer that used
    every one of `max_new_tokens` (it never ended) gets reward 0. reward, lengths: size = (B,).
    """
    if long_outputs not in ("keep", "zero", "skip"):
        raise ValueError(f"long_outputs must be keep, zero or skip, got {long_outputs!r}")
    adjusted = reward - penalty * lengths.to(reward.dtype) / max_new_tokens
    if long_outputs == "zero":
        adjusted = torch.where(lengths >= max_new_tokens, torch.zeros_like(adjusted), adjusted)
    return adjusted


def standardise(scores: Tensor, reference: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Scores minus the mean of `reference` (default: the scores), over its standard deviation (per-batch reward scaling)."""
    reference = scores if reference is None else reference
    if reference.numel() < 2:
        return scores - reference.mean()
    return (scores - reference.mean()) / (reference.std() + eps)
