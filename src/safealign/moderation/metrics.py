"""Moderation metrics as pure functions: precision/recall/F1, threshold tuning, calibration."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def binary_scores(probs: Sequence[float], labels: Sequence[float], threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of `p ≥ threshold` against 0/1 labels (positive = unsafe)."""
    tp = fp = fn = tn = 0
    for p, y in zip(probs, labels):
        pred = p >= threshold
        if pred and y:
            tp += 1
        elif pred:
            fp += 1
        elif y:
            fn += 1
        else:
            tn += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = tp + fp + fn + tn
    return {"accuracy": (tp + tn) / total if total else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def best_f1_threshold(probs: Sequence[float], labels: Sequence[float]) -> tuple[float, float]:
    """The threshold with the best F1, from one sweep over the sorted probabilities.

    Candidates are midpoints between neighbouring distinct probabilities (and the lowest
    one); ties in F1 go to the threshold closest to 0.5.
    """
    positives = sum(1 for y in labels if y)
    if not probs or positives == 0:
        return 0.5, 0.0
    return _sweep(probs, labels, lambda tp, fp: 2 * tp / (tp + fp + positives))


THRESHOLD_RULES = ("youden", "balanced-f1", "f1", "fixed")


def tune_threshold(probs: Sequence[float], labels: Sequence[float], rule: str) -> float:
    """The decision threshold on p(unsafe) that `rule` picks on validation data.

    - youden: max TPR − FPR (Youden's J, the same as max balanced accuracy): a class share
      that differs between validation and use does not move it;
    - balanced-f1: max F1 with the safe responses weighted by (unsafe / safe), as if the two
      classes were equally common;
    - f1: max plain F1 (on unsafe-majority data it drifts low and flags nearly everything);
    - fixed: 0.5.
    Candidates are midpoints between neighbouring distinct probabilities; ties go to the one
    closest to 0.5. No positive or no negative example: 0.5.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; use one of {', '.join(THRESHOLD_RULES)}")
    positives = sum(1 for y in labels if y)
    negatives = len(labels) - positives
    if rule == "fixed" or not probs or positives == 0 or negatives == 0:
        return 0.5
    if rule == "f1":
        return best_f1_threshold(probs, labels)[0]
    if rule == "youden":
        return _sweep(probs, labels, lambda tp, fp: tp / positives - fp / negatives)[0]
    weight = positives / negatives  # balanced-f1: a safe response counts as this many
    return _sweep(probs, labels, lambda tp, fp: 2 * tp / (tp + weight * fp + positives))[0]


def _sweep(probs: Sequence[float], labels: Sequence[float], value: Callable[[int, int], float]) -> tuple[float, float]:
    """(threshold, its value) maximising value(tp, fp) over cuts between distinct sorted probabilities; ties nearest 0.5."""
    pairs = sorted(zip(probs, labels), reverse=True)
    best = (-math.inf, 0.0, 0.5)  # (value, -distance to 0.5, threshold)
    tp = fp = 0
    for i, (p, y) in enumerate(pairs):
        tp += bool(y)
        fp += not y
        nxt = pairs[i + 1][0] if i + 1 < len(pairs) else None
        if nxt is not None and nxt == p:
            continue  # a threshold cannot split equal probabilities
        cut = p if nxt is None else (p + nxt) / 2
        best = max(best, (value(tp, fp), -abs(cut - 0.5), cut))
    return best[2], best[0]


def expected_calibration_error(probs: Sequence[float], labels: Sequence[float], bins: int = 10) -> float:
    """ECE: Σ_b (n_b / N)·|mean label − mean probability| over equal-width probability bins."""
    if not probs:
        return 0.0
    totals = [[0, 0.0, 0.0] for _ in range(bins)]
    for p, y in zip(probs, labels):
        b = min(int(p * bins), bins - 1)
        totals[b][0] += 1
        totals[b][1] += y
        totals[b][2] += p
    n = len(probs)
    return sum(c / n * abs(ys / c - ps / c) for c, ys, ps in totals if c)
