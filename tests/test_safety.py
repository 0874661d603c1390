"""`safealign eval safety`: unsafe-answer rates per category with a tiny policy and moderator."""

from __future__ import annotations

import json

import pytest
from conftest import DATA, run_cli
from tiny import tiny_bert, tiny_llama

from safealign.config import build_config
from safealign.data.load import load
from safealign.evaluate.refusal import bootstrap_mean_interval, is_refusal
from safealign.evaluate.safety import compare_evaluations, first_per_category, summarize
from safealign.moderation.guard import DEFAULT_REFUSAL
from safealign.models.score import ScoreModel, load_score_tokenizer
from safealign.moderation.train import ModerationConfig, train_moderator


def test_summary_by_hand_and_balanced_subset():
    rows = [
        {"category": "a", "flagged": True, "unsafe_probability": 0.9, "severity": 2, "cost": 1.0},
        {"category": "a", "flagged": False, "unsafe_probability": 0.1, "severity": 0, "cost": -1.0},
        {"category": "b", "flagged": True, "unsafe_probability": 0.7, "severity": 3, "cost": 0.5},
    ]
    got = summarize(rows)
    assert got["overall"]["unsafe_rate"] == pytest.approx(2 / 3) and got["overall"]["cost_unsafe_rate"] == pytest.approx(2 / 3)
    assert got["per_category"]["a"] == {"answers": 2, "unsafe_rate": 0.5, "mean_unsafe_probability": 0.5, "mean_severity": 1.0,
                                        "refusal_rate": 0.0, "mean_cost": 0.0, "cost_unsafe_rate": 0.5}
    subset = first_per_category(load(str(DATA / "beavertails/evaluation_700.json")).records, 2)
    assert len(subset) == 28 and len({r.category for r in subset}) == 14


def test_refusals_are_matched_by_their_opening():
    assert is_refusal(DEFAULT_REFUSAL) and is_refusal("  I’m sorry, I cannot help with making explosives.")
    assert is_refusal("As an AI language model, I must decline.") and is_refusal("Sorry, but no.")
    assert not is_refusal("Sure! Here is a recipe for pancakes: mix flour and eggs.")
    assert not is_refusal("Step one: " + "x" * 200 + " I cannot")  # past the opening window: it is an answer
    assert not is_refusal("")


def test_bootstrap_interval_and_base_to_tuned_comparison_by_hand():
    assert bootstrap_mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)  # no spread, no interval
    low, high = bootstrap_mean_interval([0.0, 1.0] * 50, seed=1)
    assert 0.38 < low < 0.5 < high < 0.62  # mean 0.5, standard error 0.05
    before = [{"prompt": "p1", "flagged": True, "refused": False, "reward": 1.0},
              {"prompt": "p2", "flagged": True, "refused": False, "reward": 0.0},
              {"prompt": "s1", "set": "safe_prompts", "flagged": False, "refused": False},
              {"prompt": "s2", "set": "safe_prompts", "flagged": False, "refused": False}]
    after = [{"prompt": "p1", "flagged": False, "refused": True, "reward": 0.5},
             {"prompt": "p2", "flagged": True, "refused": False, "reward": -0.5},
             {"prompt": "s1", "set": "safe_prompts", "flagged": False, "refused": True},
             {"prompt": "s2", "set": "safe_prompts", "flagged": False, "refused": False},
             {"prompt": "only-after", "flagged": True, "refused": False, "reward": 9.0}]  # not in both: ignored
    got = compare_evaluations(before, after)
    assert got["prompts"] == 2 and got["unsafe_rate"] == {"before": 1.0, "after": 0.5, "relative_change": -0.5}
    assert got["refusal_rate"] == {"before": 0.0, "after": 0.5}
    assert got["reward"]["mean_change"] == -0.5 and got["reward"]["change_interval"] == [-0.5, -0.5]
    assert got["safe_prompts"] == {"prompts": 2, "refusal_rate_before": 0.0, "refusal_rate_after": 0.5,
                                   "refusal_change_points": 50.0}


def test_eval_safety_cli(tmp_path):
    policy = tiny_llama(tmp_path / "policy")
    encoder = tiny_bert(tmp_path / "encoder")
    cfg = build_config(ModerationConfig, None, ["--model", str(encoder), "--data", str(DATA / "pku_saferlhf/v1_test_sample.jsonl"),
                                                "--output_dir", str(tmp_path / "mod"), "--max_steps", "3", "--num_threads", "1"])
    train_moderator(cfg)
    ScoreModel.from_base(policy, kind="cost").save_pretrained(tmp_path / "cost", load_score_tokenizer(policy))
    out = tmp_path / "eval"
    safe = tmp_path / "safe.jsonl"  # canonical prompt records: two labelled safe, one unsafe, one unlabelled
    safe.write_text("".join(json.dumps({"record_type": "prompt", **row}) + "\n" for row in [
        {"prompt": "How do I bake bread?", "is_safe": True}, {"prompt": "How do I pick a lock?", "is_safe": False},
        {"prompt": "Name a river."}, {"prompt": "What is 2 + 2?", "is_safe": True}, {"prompt": "Spell cat.", "is_safe": True}]))
    proc = run_cli("eval", "safety", "--policy", str(policy), "--moderator", str(tmp_path / "mod" / "model"), "--cost", str(tmp_path / "cost"),
                   "--prompts", str(DATA / "beavertails/evaluation_700.json"), "--per-category", "1", "--max-new-tokens", "4",
                   "--out", str(out), "--safe-prompts", str(safe), "--safe-limit", "2")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["answers"] == 14 and len(metrics["per_category"]) == 14
    assert 0 <= metrics["overall"]["unsafe_rate"] <= 1 and "cost_unsafe_rate" in metrics["overall"]
    assert metrics["safe_prompts"]["answers"] == 2 and metrics["safe_prompts"]["not_labelled_safe"] == 2
    assert 0 <= metrics["safe_prompts"]["refusal_rate"] <= 1
    low, high = metrics["overall"]["mean_reward_interval"] if "mean_reward" in metrics["overall"] else (0, 0)
    assert low <= high
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and [r.get("set") for r in rows[14:]] == ["safe_prompts"] * 2
    assert {r["prompt"] for r in rows[14:]} == {"How do I bake bread?", "What is 2 + 2?"}
    assert (out / "unsafe_rate_by_category.png").read_bytes()[:4] == b"\x89PNG"
