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


def test_dpo_by_hand_and_safe_margin():
    from safealign.losses import dpo_loss, safe_dpo_margin

    pc, pr, rc, rr = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # β[(−1+2) − (−3+2)] = 0.5·2 = 1
    assert loss.item() == pytest.approx(-log_sigmoid(1.0)) and chosen.item() == 0.5 and rejected.item() == -0.5
    margin = safe_dpo_margin(torch.tensor([0, 0, 1]), torch.tensor([1, 0, 1]), delta=2.0)
    assert margin.tolist() == [2.0, 0.0, 0.0]
    with_margin, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, margin=torch.tensor([2.0]))
    assert with_margin.item() == pytest.approx(-log_sigmoid(-1.0))


def gae_loop(rewards, values, length, gamma, lam):
    """Plain per-sequence GAE, the textbook loop, to check the vectorised one against."""
    adv = [0.0] * length
    running = 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv


def test_gae_matches_a_plain_loop():
    from safealign.losses import gae

    torch.manual_seed(0)
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)
    lengths = [7, 5, 1, 3]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    for gamma, lam in ((1.0, 0.95), (0.9, 0.5)):
        advantages, returns = gae(rewards, values, mask, gamma, lam)
        for row, n in enumerate(lengths):
            expected = gae_loop(rewards[row].tolist(), values[row].tolist(), n, gamma, lam)
            assert advantages[row, :n].tolist() == pytest.approx(expected, abs=1e-5)
            assert advantages[row, n:].abs().sum() == 0
            assert returns[row, :n].tolist() == pytest.approx([a + v for a, v in zip(expected, values[row, :n].tolist())], abs=1e-5)


def test_ppo_surrogate_value_loss_and_lagrangian_advantage_by_hand():
    from safealign.losses import clipped_value_loss, lagrangian_advantage, ppo_policy_loss

    log_probs = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))  # ratios 1.5, 0.5, 1.0 against old log-probs of 0
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: min(1.5, 1.2)·1 = 1.2 ; token 1: min(0.5, 0.8)·1 = 0.5 ; token 2 masked
    assert ppo_policy_loss(log_probs, old, adv, mask).item() == pytest.approx(-(1.2 + 0.5) / 2)
    values, old_values, returns = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    # token 0: max((10−1)², (5−1)²) = 81 ; token 1: max(4, 4) = 4
    assert clipped_value_loss(values, old_values, returns, torch.ones(1, 2), clip=5.0).item() == pytest.approx(0.5 * (81 + 4) / 2)
    assert lagrangian_advantage(torch.tensor(3.0), torch.tensor(1.0), 2.0).item() == pytest.approx(1 / 3)


def test_lagrange_multiplier_direction_clamp_delay_and_state():
    from safealign.train.lagrange import LagrangeMultiplier

    lam = LagrangeMultiplier(initial=1.0, learning_rate=0.1, threshold=0.0, maximum=5.0, window=4)
    assert lam.update([1.0, 1.0]) == pytest.approx(math.exp(0.1))  # J_C = 1 > 0: log λ += 0.1·1·1
    grown = [lam.update([1.0]) for _ in range(40)][-1]
    assert grown == pytest.approx(5.0)  # clamped at λ_max
    for _ in range(4):
        lam.update([-1.0])
    assert lam.episode_cost == -1.0  # the window holds the last 4 episodes only
    assert lam.update([-1.0]) < 5.0  # J_C < d: λ shrinks
    resumed = LagrangeMultiplier(initial=1.0, window=4)
    resumed.load_state_dict(lam.state_dict())
    assert resumed.value == lam.value and resumed.episode_cost == lam.episode_cost
    delayed = LagrangeMultiplier(delay=2)
    assert delayed.update([3.0]) == 1.0 and delayed.update([3.0]) == 1.0 and delayed.update([3.0]) > 1.0
