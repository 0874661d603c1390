"""Whether an answer is a refusal (`safealign.data.refusal`), and a bootstrap interval of a mean.

The refusal rule is data-level text matching and lives in `safealign.data.refusal`; it is
re-exported here for the evaluations that report refusal rates.
"""

from __future__ import annotations

import numpy as np

from safealign.data.refusal import REFUSAL_PHRASES, is_refusal

__all__ = ["REFUSAL_PHRASES", "bootstrap_mean_interval", "is_refusal"]


def bootstrap_mean_interval(values: list[float] | np.ndarray, n_boot: int = 2000, seed: int = 0,
                            level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values` (resampled with replacement)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to resample")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(n_boot, data.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))
