"""The realign pairs, the BeaverTails prompt labels and PKU-SafeRLHF-single-dimension: adapters and every consumer."""

from __future__ import annotations

import json

import pytest
from conftest import shared_data, write_jsonl  # noqa: F401 (shared_data is a fixture)

from safealign.data.derive import derive, pair_to_preference
from safealign.data.errors import DataError
from safealign.data.load import load
from safealign.data.records import DualPreferencePair, PreferencePair, PromptRecord
from safealign.data.stats import compute_stats, stats_dict
from safealign.data.write import write_records
from safealign.train.policy import chosen_response_id

LABELS = "{" + ", ".join(f"'{c}': {c == 'animal_abuse'}" for c in (
    "animal_abuse", "child_abuse", "controversial_topics,politics", "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance", "financial_crime,property_crime,theft", "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety", "non_violent_unethical_behavior", "privacy_violation", "self_harm",
    "sexually_explicit,adult_content", "terrorism,organized_crime", "violence,aiding_and_abetting,incitement")) + "}"


def test_realign_pairs_have_a_safety_order_and_no_helpfulness_order(tmp_path):
    path = tmp_path / "realign.json"
    path.write_text(json.dumps([{"prompt": "p", "response": ["safe answer", "unsafe answer"]},
                                {"prompt": "q", "response": ["same", "same"]},
                                {"prompt": "r", "response": ["only one"]}]))
    loaded = load(str(path), strict=False)
    assert list(loaded.report.formats.values()) == ["pku-saferlhf-realign"]
    assert (loaded.report.read, loaded.report.kept, loaded.report.rejected) == (3, 1, 2)
    reasons = sorted(r.reason for r in loaded.report.rejections)
    assert "expected a list of two responses [safer, less safe], got a list of 1" in reasons[0]
    pair = loaded.records[0]
    assert isinstance(pair, DualPreferencePair) and pair.better_response_id is None
    assert (pair.safer_response_id, pair.is_response_0_safe, pair.is_response_1_safe) == (0, True, False)
    # every consumer copes: no helpfulness order is ever invented
    assert pair_to_preference(pair, "helpfulness") is None and pair_to_preference(pair, "both") is None
    assert pair_to_preference(pair, "harmlessness").chosen == "safe answer"
    assert derive([pair], "helpfulness") == ([], 1)
    assert chosen_response_id(pair, "helpfulness") is None and chosen_response_id(pair, "harmlessness") == 0
    stats = stats_dict(compute_stats([pair]))
    assert stats["pairs_without_helpfulness_order"] == 1 and stats["dual_preference_pairs"] == 0
    out = tmp_path / "canonical.jsonl"
    write_records([pair], out)  # round trip: null stays null
    assert load(str(out)).records[0].better_response_id is None


def test_a_reward_model_skips_pairs_without_a_helpfulness_order_and_says_so(tmp_path, capsys):
    from tiny import tiny_llama

    from safealign.models.score import load_score_tokenizer
    from safealign.train.score import _pair_examples

    pairs = [DualPreferencePair("p", "a", "b", None, 0, True, False), DualPreferencePair("p", "a", "c", 1, 0, True, False)]
    tokenizer = load_score_tokenizer(tiny_llama(tmp_path / "tiny"))
    assert len(_pair_examples(pairs, "reward", tokenizer, 64)) == 1
    assert "skipped 1 of 2 pair(s) with no helpfulness order" in capsys.readouterr().out
    assert len(_pair_examples(pairs, "cost", tokenizer, 64)) == 2  # the safety order is there for a cost model
    with pytest.raises(DataError, match="no pair to train a reward model on: all 1 pair"):
        _pair_examples(pairs[:1], "reward", tokenizer, 64)
    assert _pair_examples([], "reward", tokenizer, 64) == []  # an empty evaluation split is not an error


def test_beavertails_prompt_labels_parse_the_category_literal_safely(tmp_path):
    rows = [{"text": "hurt a cat", "label": "harmful", "source": "beavertails", "category": LABELS},
            {"text": "hello", "label": "safe", "category": LABELS.replace("'animal_abuse': True", "'animal_abuse': False")},
            {"text": "x", "label": "safe", "category": LABELS},  # safe but flags a category
            {"text": "y", "label": "harmful", "category": "__import__('os').system('echo pwned')"},
            {"text": "z", "label": "maybe", "category": LABELS}]
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(rows))
    loaded = load(str(path), strict=False)
    assert list(loaded.report.formats.values()) == ["beavertails-prompt-label"]
    assert (loaded.report.read, loaded.report.kept, loaded.report.rejected) == (5, 2, 3)
    first, second = loaded.records
    assert isinstance(first, PromptRecord) and first.is_safe is False and first.harm_categories == ("animal_abuse",)
    assert second.is_safe is True and second.harm_categories == ()
    reasons = " | ".join(r.reason for r in loaded.report.rejections)
    assert "label is safe but the record flags 'animal_abuse'" in reasons
    assert "not a literal dict" in reasons and "must be one of safe, harmful" in reasons
    assert stats_dict(compute_stats(loaded.records))["prompts"] == {"unsafe": 1, "safe": 1}


def test_single_dimension_pairs_are_single_preferences_with_checked_hashes(tmp_path):
    from hashlib import sha256

    def row(better: int, tamper: bool = False) -> dict:
        r = {"prompt": "p", "response_0": "first", "response_1": "second", "prompt_source": "s",
             "response_0_source": "m0", "response_1_source": "m1", "better_response_id": better}
        for i in (0, 1):
            r[f"response_{i}_sha256"] = sha256(("p" + r[f"response_{i}"]).encode()).hexdigest()
        if tamper:
            r["response_1"] = "changed"
        return r

    path = write_jsonl(tmp_path / "single.jsonl", [row(1), row(0, tamper=True)])
    loaded = load(str(path), strict=False)
    assert list(loaded.report.formats.values()) == ["pku-saferlhf-single-dimension"]
    assert (loaded.report.kept, loaded.report.rejected) == (1, 1)
    pair = loaded.records[0]
    assert isinstance(pair, PreferencePair) and (pair.chosen, pair.rejected, pair.source) == ("second", "first", "m1")


def test_the_shared_files_load_whole(shared_data):
    counts = {}
    for name in ("pku_saferlhf/realign_dpo_5135.json", "beavertails/prompts_30k_test_2019.json",
                 "pku_saferlhf/single_dimension_128.jsonl"):
        loaded = load(str(shared_data / name))
        counts[name] = (loaded.report.read, loaded.report.kept)
    assert counts == {"pku_saferlhf/realign_dpo_5135.json": (5135, 5135),
                      "beavertails/prompts_30k_test_2019.json": (2019, 2019),
                      "pku_saferlhf/single_dimension_128.jsonl": (128, 128)}
    prompts = load(str(shared_data / "beavertails/prompts_30k_test_2019.json")).records
    assert sum(not p.is_safe for p in prompts) == 1177
