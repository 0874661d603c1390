"""Dataset statistics against hand-computed numbers."""

from __future__ import annotations

from safealign.data.records import AttributeRecord, DualPreferencePair, PreferencePair, PromptRecord, QARecord
from safealign.data.stats import compute_stats, stats_dict, summary, write_plots


def records():
    return [
        DualPreferencePair("one two", "a b c", "d", 0, 1, False, True, ("Violence",), (), 2, 0, "pku-saferlhf"),
        DualPreferencePair("three", "e", "f g", 1, 1, True, True, (), (), 0, 0, "pku-saferlhf"),
        QARecord("q", "x y", False, ("Violence", "Drugs"), 3, "pku-saferlhf", context=(("user", "hi"), ("assistant", "yo"))),
        PreferencePair("p", "c c", "r"),
        AttributeRecord("a", "b", helpfulness=3, correctness=None, coherence=4, complexity=1, verbosity=2),
        PromptRecord("how?", "self_harm", "beavertails"),
    ]


def test_counts_ratios_and_agreement():
    st = compute_stats(records())
    d = stats_dict(st)
    assert d["records"] == {"dual_preference": 2, "qa": 1, "preference": 1, "attribute": 1, "prompt": 1}
    # labelled responses: pair 1 -> unsafe, safe; pair 2 -> safe, safe; qa -> unsafe
    assert d["responses"] == {"unsafe": 2, "safe": 3, "unlabelled": 3}
    assert d["safe_ratio"] == 3 / 5
    assert d["harm_categories"] == {"pku-saferlhf:Violence": 2, "pku-saferlhf:Drugs": 1}
    assert d["severity"] == {"0 safe": 3, "2 moderate": 1, "3 severe": 1}
    assert d["better_is_safer"] == 0.5 and d["better_safer"] == {"better=0,safer=1": 1, "better=1,safer=1": 1}
    assert d["pair_safety"] == {"one safe": 1, "both safe": 1}
    assert d["prompt_categories"] == {"beavertails:self_harm": 1}
    assert d["attributes_mean"]["helpfulness"] == 3 and d["attributes_mean"]["correctness"] is None
    assert d["attributes_missing"] == {"correctness": 1}
    assert d["multi_turn_records"] == 1
    # prompt words: 2,1,1,1,1,1 ; response words: 3,1,1,2,2,2,1,1
    assert d["prompt_words"] == {"min": 1, "median": 1.0, "p90": 2, "max": 2, "mean": 7 / 6}
    assert d["response_words"]["mean"] == 13 / 8 and d["response_words"]["median"] == 1.5


def test_summary_odd_and_empty():
    assert summary([5, 1, 3]) == {"min": 1, "median": 3, "p90": 5, "max": 5, "mean": 3}
    assert summary([]) == {}


def test_plots_are_written(tmp_path):
    written = write_plots(compute_stats(records()), tmp_path)
    names = {p.name for p in written}
    assert names == {"harm_categories.png", "prompt_categories.png", "severity.png", "better_vs_safer.png", "lengths.png"}
    assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in written)
