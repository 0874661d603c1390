"""The Lagrange multiplier of PPO-Lagrangian (Safe RLHF), learned in log space."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class LagrangeMultiplier:
    """λ ≥ 0 for the constraint J_C ≤ d, updated once per step.

    The multiplier descends the loss L(log λ) = −(J_C − d)·λ, whose gradient is
    g = −(J_C − d)·λ, where J_C is the mean episode cost over a moving window of the last
    `window` episodes. With `optimizer="sgd"` (the default) one step is

        log λ ← log λ + η·(J_C − d)·λ,

    exactly safe-rlhf's update (SGD on log λ with that loss): the step grows with λ itself
    and with the size of the violation, so costs on a large scale move λ fast. With
    `optimizer="adam"`, Adam (β = 0.9, 0.999, ε = 1e-8, bias-corrected) on the same gradient
    takes steps of about η in log λ whatever the scale of the costs. λ is clamped to
    `maximum`, and no update happens during the first `delay` steps. While J_C > d, λ grows
    (the cost weighs more in the advantage); once the constraint holds it shrinks. State
    round-trips through `state_dict`.
    """

    initial: float = 1.0
    learning_rate: float = 0.1
    threshold: float = 0.0
    maximum: float = 5.0
    window: int = 128
    delay: int = 0
    optimizer: str = "sgd"
    log_value: float = field(init=False)
    costs: deque = field(init=False)
    steps: int = field(init=False, default=0)
    moments: tuple[float, float, int] = field(init=False, default=(0.0, 0.0, 0))  # Adam's m, v, t

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError(f"lambda_init must be above 0, got {self.initial}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"lambda_optimizer must be sgd or adam, got {self.optimizer!r}")
        self.log_value = math.log(self.initial)
        self.costs = deque(maxlen=self.window)

    @property
    def value(self) -> float:
        """Current λ."""
        return math.exp(self.log_value)

    @property
    def episode_cost(self) -> float:
        """J_C: mean episode cost over the window (0 before any episode)."""
        return sum(self.costs) / len(self.costs) if self.costs else 0.0

    def update(self, episode_costs: list[float]) -> float:
        """Add this step's episode costs, take one multiplier step, return the new λ."""
        self.costs.extend(episode_costs)
        self.steps += 1
        if self.steps > self.delay:
            gradient = -(self.episode_cost - self.threshold) * self.value
            self.log_value = min(self.log_value - self._step(gradient), math.log(self.maximum))
        return self.value

    def _step(self, gradient: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> float:
        """The amount subtracted from log λ for this gradient."""
        if self.optimizer == "sgd":
            return self.learning_rate * gradient
        m, v, t = self.moments
        t += 1
        m = betas[0] * m + (1 - betas[0]) * gradient
        v = betas[1] * v + (1 - betas[1]) * gradient**2
        self.moments = (m, v, t)
        return self.learning_rate * (m / (1 - betas[0] ** t)) / (math.sqrt(v / (1 - betas[1] ** t)) + eps)

    def state_dict(self) -> dict:
        """Everything needed to resume: log λ, the step count, the cost window and Adam's moments."""
        return {"log_value": self.log_value, "steps": self.steps, "costs": list(self.costs), "moments": list(self.moments)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.log_value = state["log_value"]
        self.steps = state["steps"]
        self.costs = deque(state["costs"], maxlen=self.window)
        m, v, t = state.get("moments", (0.0, 0.0, 0))
        self.moments = (float(m), float(v), int(t))
