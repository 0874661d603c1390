"""Steering at the hooked layer: add a concept's direction, scaled by the hidden state's norm.

For a row with steering vector v (unit norm, or a sum of factor-weighted unit directions
when several targets fire) every position's hidden state h at the layer becomes

    h + ‖h‖ · Σ_t factor_t · v̂_t

(ActivationReasoning's rule, factor 0.5 by default). Rows with no target get nothing added,
so a batch can mix steered and plain rows. The hook runs on every forward pass while it is
installed: the prompt's prefill and each generated token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from safealign.reasoning.activations import ResidualHook


def norm_scaled(vectors: Tensor) -> Any:
    """The hook's delta: h ↦ ‖h‖ · vectors[row] (vectors size = (B, D), or (D,) for every row)."""

    placed: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def delta(hidden: Tensor) -> Tensor:
        key = (hidden.dtype, hidden.device)
        if key not in placed:
            placed[key] = vectors.to(device=hidden.device, dtype=hidden.dtype)
        v = placed[key]
        if v.dim() == 1:
            v = v.expand(hidden.size(0), -1)
        if v.size(0) != hidden.size(0):
            raise ValueError(f"steering: {v.size(0)} vectors for a batch of {hidden.size(0)}")
        return hidden.norm(dim=-1, keepdim=True) * v.unsqueeze(1)

    return delta


def combined(directions: dict[str, Tensor], factors: dict[str, float]) -> Tensor:
    """Σ_t factor_t · v̂_t over the targets in `factors` (each direction normalised first)."""
    total = None
    for target, factor in factors.items():
        v = directions[target]
        part = factor * v / v.norm().clamp_min(1e-12)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("no steering target")
    return total


@contextmanager
def steering(model: Any, layer: int, vectors: Tensor) -> Iterator[ResidualHook]:
    """While inside, decoder layer `layer` adds ‖h‖ · vectors[row] to its output (nothing is recorded)."""
    if not torch.isfinite(vectors).all():
        raise ValueError("steering: the vector has NaN or Inf entries")
    with ResidualHook(model, layer, record=False, delta=norm_scaled(vectors)) as hook:
        yield hook
