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
