"""Losses against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from safealign.losses import bradley_terry_loss, cost_loss, masked_regression_loss, pairwise_accuracy, sign_accuracy


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_bradley_terry_by_hand():
    better, worse = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # −mean(log σ(1), log σ(−1)) + 0.001 · mean(4, 0, 1, 1)
    expected = -(log_sigmoid(1.0) + log_sigmoid(-1.0)) / 2 + 0.001 * 6 / 4
    assert bradley_terry_loss(better, worse).item() == pytest.approx(expected, rel=1e-6)
    assert bradley_terry_loss(better, worse, regularization=0).item() == pytest.approx(math.log(1 + math.e) / 2 + math.log(1 + 1 / math.e) / 2, rel=1e-6)


def test_cost_loss_by_hand_with_missing_signs():
    safer, unsafer = torch.tensor([-1.0, 0.5]), torch.tensor([2.0, 1.0])
    safer_sign, unsafer_sign = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 0.0])
    pair0 = -log_sigmoid(3.0) - log_sigmoid(2.0) - log_sigmoid(1.0)
    pair1 = -log_sigmoid(0.5)  # no labels: only the pairwise term
    reg = 0.01 * (1 + 0.25 + 4 + 1) / 4
    got = cost_loss(safer, unsafer, safer_sign, unsafer_sign, regularization=0.01).item()
    assert got == pytest.approx((pair0 + pair1) / 2 + reg, rel=1e-6)


def test_cost_loss_pushes_safe_below_zero_and_unsafe_above():
    safer = torch.zeros(1, requires_grad=True)
    unsafer = torch.zeros(1, requires_grad=True)
    cost_loss(safer, unsafer, torch.tensor([-1.0]), torch.tensor([1.0])).backward()
    assert safer.grad.item() > 0 and unsafer.grad.item() < 0  # descent lowers the safe cost, raises the unsafe one


def test_masked_regression_ignores_missing():
    predicted = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[2.0, 100.0], [1.0, 4.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    assert masked_regression_loss(predicted, target, mask).item() == pytest.approx((1 + 4 + 0) / 3)
    assert masked_regression_loss(predicted, target, torch.zeros(2, 2)).item() == 0.0


def test_accuracies():
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 1.0])).item() == pytest.approx(2 / 3)
    scores, signs = torch.tensor([0.5, -0.2, 0.1, 3.0]), torch.tensor([1.0, -1.0, -1.0, 0.0])
    assert sign_accuracy(scores, signs).item() == pytest.approx(2 / 3)
    assert math.isnan(sign_accuracy(scores, torch.zeros(4)).item())
