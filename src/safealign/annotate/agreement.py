"""Inter-annotator agreement on nominal labels: raw agreement, Cohen's κ, Krippendorff's α.

A field's labels are given as `units`: for each item, the labels its annotators gave
(`{annotator: label}`; any hashable label, e.g. a response id, a severity, a sorted tuple of
categories). Units with fewer than two labels carry no agreement and are left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations, permutations

Units = Sequence[Mapping[str, Hashable]]


def raw_agreement(units: Units) -> float | None:
    """Share of annotator pairs, over all items, that gave the same label; None without any pair."""
    agree = total = 0
    for unit in units:
        for a, b in combinations(list(unit.values()), 2):
            agree += a == b
            total += 1
    return agree / total if total else None


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float | None:
    """κ = (p_o − p_e) / (1 − p_e) for two annotators' labels on the same items, in order.

    p_o is the share of items they agree on, p_e = Σ_k p₁(k)·p₂(k) the agreement their label
    frequencies would give by chance. None when p_e = 1 (both always gave one and the same label).
    """
    if len(first) != len(second):
        raise ValueError(f"{len(first)} and {len(second)} labels: the two annotators must label the same items")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    count_1, count_2 = Counter(first), Counter(second)
    chance = sum(count_1[k] * count_2[k] for k in count_1) / (n * n)
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def pairwise_kappas(units: Units) -> dict[tuple[str, str], tuple[float | None, int]]:
    """Cohen's κ for every pair of annotators over the items both labelled: {(a, b): (κ, items)}."""
    names = sorted({name for unit in units for name in unit})
    out = {}
    for a, b in combinations(names, 2):
        shared = [(unit[a], unit[b]) for unit in units if a in unit and b in unit]
        if shared:
            out[(a, b)] = (cohen_kappa([x for x, _ in shared], [y for _, y in shared]), len(shared))
    return out


def krippendorff_alpha(units: Units) -> float | None:
    """Krippendorff's α for nominal labels, any number of annotators, missing labels allowed.

    From the coincidence matrix o_ck = Σ_u (pairs (c, k) of distinct annotators in u) / (m_u − 1):
    α = 1 − D_o / D_e, D_o = Σ_{c≠k} o_ck, D_e = Σ_{c≠k} n_c·n_k / (n − 1), n_c = Σ_k o_ck.
    None when there is no unit with two labels or only one label value occurs (D_e = 0).
    """
    coincidences: Counter[tuple[Hashable, Hashable]] = Counter()
    for unit in units:
        values = list(unit.values())
        m = len(values)
        if m < 2:
            continue
        for a, b in permutations(values, 2):
            coincidences[(a, b)] += 1.0 / (m - 1)
    marginals: Counter[Hashable] = Counter()
    for (c, _), weight in coincidences.items():
        marginals[c] += weight
    n = sum(marginals.values())
    if n <= 1:
        return None
    observed = sum(w for (c, k), w in coincidences.items() if c != k)
    expected = sum(marginals[c] * marginals[k] for c in marginals for k in marginals if c != k) / (n - 1)
    if expected == 0:
        return None
    return 1.0 - observed / expected


def agreement(units: Units) -> dict[str, object]:
    """Raw agreement, Krippendorff's α and the pairwise κ of one field, with the counts behind them."""
    rated = [u for u in units if len(u) >= 2]
    return {
        "items": len(rated),
        "raw": raw_agreement(rated),
        "alpha": krippendorff_alpha(rated),
        "kappa": {f"{a} / {b}": {"kappa": k, "items": n} for (a, b), (k, n) in pairwise_kappas(rated).items()},
    }
