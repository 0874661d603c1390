"""Dataset statistics: counts, safety ratio, harm categories, severity, preference agreement, lengths."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from safealign.data.records import (
    ATTRIBUTES,
    AttributeRecord,
    DualPreferencePair,
    PreferencePair,
    PromptRecord,
    QARecord,
    Record,
)
from safealign.data.taxonomy import SEVERITY_LEVELS


@dataclass
class DataStats:
    """Aggregates over a list of canonical records (lengths are whitespace-separated words)."""

    records: Counter = field(default_factory=Counter)  # record_type -> count
    safety: Counter = field(default_factory=Counter)  # "safe" / "unsafe" / "unlabelled" responses
    categories: Counter = field(default_factory=Counter)  # (taxonomy, category) -> unsafe responses
    prompt_categories: Counter = field(default_factory=Counter)  # (taxonomy, category) -> prompts
    prompt_safety: Counter = field(default_factory=Counter)  # "safe" / "unsafe" labelled prompts
    severity: Counter = field(default_factory=Counter)  # level -> responses (labelled ones only)
    agreement: Counter = field(default_factory=Counter)  # (better_id, safer_id) -> pairs
    no_helpfulness_order: int = 0  # dual pairs with a safety order only (better_response_id absent)
    pair_safety: Counter = field(default_factory=Counter)  # "both safe" / "one safe" / "both unsafe"
    attributes: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in ATTRIBUTES})
    attributes_missing: Counter = field(default_factory=Counter)
    prompt_words: list[int] = field(default_factory=list)
    response_words: list[int] = field(default_factory=list)
    multi_turn: int = 0

    @property
    def safe_ratio(self) -> float | None:
        """Share of safety-labelled responses that are safe."""
        labelled = self.safety["safe"] + self.safety["unsafe"]
        return self.safety["safe"] / labelled if labelled else None

    @property
    def pairs(self) -> int:
        """Dual-preference pairs counted."""
        return sum(self.agreement.values())

    @property
    def better_is_safer(self) -> float | None:
        """Share of dual-preference pairs whose better response is also the safer one."""
        agree = sum(n for (b, s), n in self.agreement.items() if b == s)
        return agree / self.pairs if self.pairs else None


def compute_stats(records: Iterable[Record]) -> DataStats:
    """One pass over `records`."""
    st = DataStats()
    for r in records:
        st.records[r.record_type] += 1
        st.prompt_words.append(len(r.prompt.split()))
        st.multi_turn += bool(r.context)
        if isinstance(r, DualPreferencePair):
            if r.better_response_id is None:
                st.no_helpfulness_order += 1
            else:
                st.agreement[(r.better_response_id, r.safer_response_id)] += 1
            for i in (0, 1):
                _add_response(st, r.response(i), r.is_safe(i), r.harm_categories(i), r.severity(i), r.taxonomy)
            if r.is_response_0_safe is not None and r.is_response_1_safe is not None:
                n_safe = r.is_response_0_safe + r.is_response_1_safe
                st.pair_safety[("both unsafe", "one safe", "both safe")[n_safe]] += 1
        elif isinstance(r, QARecord):
            _add_response(st, r.response, r.is_safe, r.harm_categories, r.severity, r.taxonomy)
        elif isinstance(r, PreferencePair):
            st.response_words += (len(r.chosen.split()), len(r.rejected.split()))
            st.safety["unlabelled"] += 2
        elif isinstance(r, AttributeRecord):
            st.response_words.append(len(r.response.split()))
            st.safety["unlabelled"] += 1
            for name, value in zip(ATTRIBUTES, r.attributes()):
                if value is None:
                    st.attributes_missing[name] += 1
                else:
                    st.attributes[name].append(value)
        elif isinstance(r, PromptRecord):
            if r.category is not None:
                st.prompt_categories[(r.taxonomy, r.category)] += 1
            if r.is_safe is not None:  # a labelled prompt (prompt moderation data)
                st.prompt_safety["safe" if r.is_safe else "unsafe"] += 1
                for category in r.harm_categories:
                    st.prompt_categories[(r.taxonomy, category)] += 1
    return st


def _add_response(st: DataStats, text: str, is_safe: bool | None, cats: tuple[str, ...], level: int | None, taxonomy: str | None) -> None:
    st.response_words.append(len(text.split()))
    st.safety["unlabelled" if is_safe is None else "safe" if is_safe else "unsafe"] += 1
    for category in cats:
        st.categories[(taxonomy, category)] += 1
    if level is not None:
        st.severity[level] += 1


def summary(values: list[int]) -> dict[str, float]:
    """min / median / p90 / max / mean of a list of lengths."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "min": ordered[0],
        "median": ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2,
        "p90": ordered[min(n - 1, int(0.9 * n))],
        "max": ordered[-1],
        "mean": fmean(ordered),
    }


def stats_dict(st: DataStats) -> dict:
    """A JSON-ready view of the statistics."""
    return {
        "records": dict(st.records),
        "responses": dict(st.safety),
        "safe_ratio": st.safe_ratio,
        "harm_categories": {f"{t}:{c}": n for (t, c), n in st.categories.most_common()},
        "prompt_categories": {f"{t}:{c}": n for (t, c), n in st.prompt_categories.most_common()},
        "severity": {f"{k} {SEVERITY_LEVELS[k]}": st.severity[k] for k in sorted(st.severity)},
        "dual_preference_pairs": st.pairs,
        "better_is_safer": st.better_is_safer,
        "better_safer": {f"better={b},safer={s}": n for (b, s), n in sorted(st.agreement.items())},
        "pairs_without_helpfulness_order": st.no_helpfulness_order,
        "prompts": dict(st.prompt_safety),
        "pair_safety": dict(st.pair_safety),
        "attributes_mean": {a: (fmean(v) if v else None) for a, v in st.attributes.items() if v or st.attributes_missing[a]},
        "attributes_missing": dict(st.attributes_missing),
        "multi_turn_records": st.multi_turn,
        "prompt_words": summary(st.prompt_words),
        "response_words": summary(st.response_words),
    }


def write_plots(st: DataStats, out_dir: str | Path) -> list[Path]:
    """PNG charts of the statistics into `out_dir`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    for title, counter, name in (
        ("Unsafe responses per harm category", st.categories, "harm_categories.png"),
        ("Prompts per category", st.prompt_categories, "prompt_categories.png"),
    ):
        if counter:
            items = counter.most_common()[::-1]
            fig, ax = plt.subplots(figsize=(8, 0.32 * len(items) + 1.2))
            ax.barh([c for (_, c), _ in items], [n for _, n in items], color="#c0504d")
            ax.set_xlabel("count")
            ax.set_title(title)
            save(fig, name)
    if st.severity:
        levels = sorted(st.severity)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.bar([f"{k} {SEVERITY_LEVELS[k]}" for k in levels], [st.severity[k] for k in levels], color="#4f81bd")
        ax.set_xlabel("severity level")
        ax.set_ylabel("responses")
        ax.set_title("Severity distribution")
        save(fig, "severity.png")
    if st.agreement:
        grid = [[st.agreement[(b, s)] for s in (0, 1)] for b in (0, 1)]
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ax.imshow(grid, cmap="Blues")
        for b in (0, 1):
            for s in (0, 1):
                ax.text(s, b, str(grid[b][s]), ha="center", va="center")
        ax.set_xticks([0, 1], ["safer=0", "safer=1"])
        ax.set_yticks([0, 1], ["better=0", "better=1"])
        ax.set_title("Better vs safer response")
        save(fig, "better_vs_safer.png")
    if st.prompt_words or st.response_words:
        import numpy as np

        fig, ax = plt.subplots(figsize=(6, 3.8))
        bins = np.histogram_bin_edges(st.prompt_words + st.response_words, bins=40)  # shared, so bars compare
        for values, label in ((st.prompt_words, "prompt"), (st.response_words, "response")):
            if values:
                ax.hist(values, bins=bins, alpha=0.6, label=label)
        ax.set_xlabel("length (words)")
        ax.set_ylabel("count")
        ax.set_title("Length distribution")
        ax.legend()
        save(fig, "lengths.png")
    return written
