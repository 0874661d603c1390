"""The Lagrange multiplier of PPO-Lagrangian (Safe RLHF), learned in log space."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class LagrangeMultiplier:
    """λ ≥ 0 for the constraint J_C ≤ d, updated once per step.

    log λ ← log λ + η·(J_C − d)·λ, where J_C is the mean episode cost over a moving window of
    the last `window` episodes; λ is clamped to `maximum`, and no update happens during the
    first `delay` steps. While J_C > d, λ grows (the cost weighs more in the advantage);
    once the constraint holds it shrinks. State round-trips through `state_dict`.
    """

    initial: float = 1.0
    learning_rate: float = 0.1
    threshold: float = 0.0
    maximum: float = 5.0
    window: int = 128
    delay: int = 0
    log_value: float = field(init=False)
    costs: deque = field(init=False)
    steps: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError(f"lambda_init must be above 0, got {self.initial}")
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
            violation = self.episode_cost - self.threshold
            self.log_value = min(self.log_value + self.learning_rate * violation * self.value, math.log(self.maximum))
        return self.value

    def state_dict(self) -> dict:
        """Everything needed to resume: log λ, the step count and the cost window."""
        return {"log_value": self.log_value, "steps": self.steps, "costs": list(self.costs)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.log_value = state["log_value"]
        self.steps = state["steps"]
        self.costs = deque(state["costs"], maxlen=self.window)
