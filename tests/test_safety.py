"""`safealign eval safety`: unsafe-answer rates per category with a tiny policy and moderator."""

from __future__ import annotations

import json

import pytest
from conftest import DATA, run_cli
from tiny import tiny_bert, tiny_llama

from safealign.config import build_config
from safealign.data.load import load
from safealign.evaluate.safety import first_per_category, summarize
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
                                        "mean_cost": 0.0, "cost_unsafe_rate": 0.5}
    subset = first_per_category(load(str(DATA / "beavertails/evaluation_700.json")).records, 2)
    assert len(subset) == 28 and len({r.category for r in subset}) == 14


def test_eval_safety_cli(tmp_path):
    policy = tiny_llama(tmp_path / "policy")
    encoder = tiny_bert(tmp_path / "encoder")
    cfg = build_config(ModerationConfig, None, ["--model", str(encoder), "--data", str(DATA / "pku_saferlhf/v1_test_sample.jsonl"),
                                                "--output_dir", str(tmp_path / "mod"), "--max_steps", "3", "--num_threads", "1"])
    train_moderator(cfg)
    ScoreModel.from_base(policy, kind="cost").save_pretrained(tmp_path / "cost", load_score_tokenizer(policy))
    out = tmp_path / "eval"
    proc = run_cli("eval", "safety", "--policy", str(policy), "--moderator", str(tmp_path / "mod" / "model"), "--cost", str(tmp_path / "cost"),
                   "--prompts", str(DATA / "beavertails/evaluation_700.json"), "--per-category", "1", "--max-new-tokens", "4",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["answers"] == 14 and len(metrics["per_category"]) == 14
    assert 0 <= metrics["overall"]["unsafe_rate"] <= 1 and "cost_unsafe_rate" in metrics["overall"]
    assert len((out / "answers.jsonl").read_text().splitlines()) == 14
    assert (out / "unsafe_rate_by_category.png").read_bytes()[:4] == b"\x89PNG"
