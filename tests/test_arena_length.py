"""Arena (Bradley–Terry ratings, win/tie/lose, safety 2×2) and length bias: hand-computed numbers and both CLIs."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, run_cli
from tiny import tiny_llama

from safealign.data.errors import DataError
from safealign.evaluate.arena import (
    arena_report,
    bootstrap_ratings,
    fit_bradley_terry,
    load_scorer,
    prompt_wins,
    safety_table,
    to_rating,
    win_tie_lose,
    wins_matrix,
)
from safealign.evaluate.length import average_ranks, longer_preferred, non_length_gain, pearson, response_length, spearman
from safealign.models.score import ScoreModel, load_score_tokenizer

PROMPTS = str(DATA / "beavertails/evaluation_700.json")
PAIRS = str(DATA / "pku_saferlhf/v0_pairs_32.json")


# --- Bradley–Terry -------------------------------------------------------------------------


def test_three_wins_in_four_give_a_strength_ratio_of_three():
    theta = fit_bradley_terry(np.array([[0.0, 3.0], [1.0, 0.0]]))
    assert math.exp(theta[0] - theta[1]) == pytest.approx(3.0)
    assert theta.sum() == pytest.approx(0.0)  # normalised to mean log-strength 0
    ratings = to_rating(theta)
    assert ratings.mean() == pytest.approx(1000.0)
    assert ratings[0] - ratings[1] == pytest.approx(400 * math.log10(3))  # 190.85 Elo-like points


def test_ties_count_half_to_each_side():
    # A vs B: 2 wins, 2 ties, no loss -> A has 3 of 4 "wins" -> ratio 3; all ties -> equal.
    w = wins_matrix([(0, 1, 1.0), (0, 1, 1.0), (0, 1, 0.5), (1, 0, 0.5)], 2)
    np.testing.assert_allclose(w, [[0, 3], [1, 0]])
    assert math.exp(np.subtract(*fit_bradley_terry(w))) == pytest.approx(3.0)
    np.testing.assert_allclose(fit_bradley_terry(wins_matrix([(0, 1, 0.5)] * 5, 2)), [0.0, 0.0], atol=1e-12)


def test_a_chain_of_comparisons_multiplies_the_ratios():
    # A beats B 2 of 3, B beats C 3 of 4, A and C never meet: p_A/p_B = 2, p_B/p_C = 3, so p_A/p_C = 6.
    w = np.zeros((3, 3))
    w[0, 1], w[1, 0], w[1, 2], w[2, 1] = 2, 1, 3, 1
    p = np.exp(fit_bradley_terry(w))
    assert p[0] / p[1] == pytest.approx(2.0, rel=1e-6)
    assert p[1] / p[2] == pytest.approx(3.0, rel=1e-6)
    assert p[0] / p[2] == pytest.approx(6.0, rel=1e-6)


def test_fit_solves_the_likelihood_equations_and_ignores_order():
    rng = random.Random(0)
    comparisons = [(i, j, rng.choice([0.0, 0.5, 1.0, 1.0])) for _ in range(60) for i, j in [rng.sample(range(4), 2)]]
    theta = fit_bradley_terry(wins_matrix(comparisons, 4))
    # Maximum likelihood: W_i = Σ_j n_ij · p_i / (p_i + p_j) for every i.
    w = wins_matrix(comparisons, 4)
    p = np.exp(theta)
    expected = ((w + w.T) * p[:, None] / (p[:, None] + p[None, :])).sum(1)
    np.testing.assert_allclose(w.sum(1), expected, rtol=1e-8)
    shuffled = [(j, i, 1.0 - s) if rng.random() < 0.5 else (i, j, s) for i, j, s in comparisons]  # either side first
    rng.shuffle(shuffled)
    np.testing.assert_allclose(fit_bradley_terry(wins_matrix(shuffled, 4)), theta, atol=1e-9)


def test_a_clean_sweep_needs_a_prior():
    sweep = np.array([[0.0, 4.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="prior"):
        fit_bradley_terry(sweep)
    # 0.5 virtual wins each way: 4.5 vs 0.5 -> ratio 9.
    assert math.exp(np.subtract(*fit_bradley_terry(sweep, prior=0.5))) == pytest.approx(9.0)


def test_bootstrap_of_identical_prompts_is_a_point_and_otherwise_covers_the_fit():
    same = prompt_wins(np.array([[1.0, 0.0]] * 4), tie_eps=1e-3)
    low, high = bootstrap_ratings(same, n_boot=50, seed=0, prior=0.5)
    point = to_rating(fit_bradley_terry(same.sum(0), prior=0.5))
    np.testing.assert_allclose(low, point)
    np.testing.assert_allclose(high, point)
    assert point[0] - point[1] == pytest.approx(400 * math.log10(9))
    rewards = np.random.default_rng(1).normal(size=(80, 3)) + [0.0, 0.3, 0.6]
    per_prompt = prompt_wins(rewards, 1e-3)
    point = to_rating(fit_bradley_terry(per_prompt.sum(0), prior=0.5))
    low, high = bootstrap_ratings(per_prompt, 300, seed=3, prior=0.5)
    assert np.all(low < point) and np.all(point < high)
    np.testing.assert_array_equal(bootstrap_ratings(per_prompt, 300, seed=3, prior=0.5)[0], low)  # seeded


# --- pairwise tables -----------------------------------------------------------------------


def test_win_tie_lose_and_the_safety_table():
    a, b = [1.0, 0.5, 0.2, 0.3, 0.0], [0.0, 0.5, 0.7, 0.2999, 0.0]
    assert win_tie_lose(a, b, tie_eps=1e-3) == {"win": 1, "tie": 3, "lose": 1}
    assert win_tie_lose(a, b, tie_eps=0.0) == {"win": 2, "tie": 2, "lose": 1}  # exact equality is still a tie
    # Rows: a safe / unsafe; columns: b safe / unsafe. Cost 0 is safe (E[c] <= 0 holds).
    assert safety_table([-1.0, 0.0, 0.5, 2.0, -1.0], [-0.3, 1.0, -2.0, 3.0, -1.0]) == [[2, 1], [1, 1]]


def test_prompt_wins_and_the_report():
    np.testing.assert_allclose(prompt_wins(np.array([[1.0, 2.0, 2.0]]), 1e-3)[0], [[0, 0, 0], [1, 0, 0.5], [1, 0.5, 0]])
    rewards = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    costs = np.array([[-1.0, 1.0], [-1.0, -1.0], [2.0, 1.0], [-1.0, 0.5]])
    report = arena_report(["a", "b"], rewards, costs, tie_eps=1e-3, prior=0.0, n_boot=0, seed=0)
    (pair,) = report["pairs"]
    assert (pair["win"], pair["tie"], pair["lose"], pair["win_rate_a"]) == (2, 1, 1, 0.625)
    assert pair["safety_table"]["counts"] == [[1, 2], [0, 1]]  # (s,u) (s,s) (u,u) (s,u)
    assert report["policies"]["a"]["unsafe_share"] == 0.25 and report["policies"]["b"]["unsafe_share"] == 0.75
    # 2.5 vs 1.5 "wins" -> ratio 5/3.
    gap = report["policies"]["a"]["rating"] - report["policies"]["b"]["rating"]
    assert gap == pytest.approx(400 * math.log10(5 / 3))
    np.testing.assert_allclose(report["win_rate_matrix"], [[0, 0.625], [0.375, 0]])


# --- length bias ---------------------------------------------------------------------------


def test_correlations_by_hand():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # Σdxdy = 4, Σdx² = Σdy² = 5
    np.testing.assert_allclose(average_ranks([3, 1, 1, 2]), [4, 1.5, 1.5, 3])
    # Ranks (1.5, 1.5, 3, 4) vs (1, 2, 3, 4): Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5.
    assert spearman([1, 1, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None


def test_longer_preferred_leaves_length_ties_out():
    shares = longer_preferred([(10, 5), (3, 8), (4, 4), (7, 2)])
    assert shares == {"pairs": 4, "longer_preferred": 2, "shorter_preferred": 1, "length_ties": 1,
                      "share_longer_preferred": pytest.approx(2 / 3)}


def test_pair_length_bias_accuracy_by_hand():
    from safealign.evaluate.length import pair_length_bias

    # pairs: (10 preferred, 5) model right; (3 preferred, 8) model wrong (prefers the longer); (4, 4 preferred) right;
    # (7, 2) with no order: only in the correlations and the model's share.
    lengths = [10, 5, 3, 8, 4, 4, 7, 2]
    rewards = [1.0, 0.0, 0.0, 1.0, 0.2, 0.5, 0.3, 0.1]
    preferred = [True, False, True, False, False, True, None, None]
    out = pair_length_bias(lengths, rewards, preferred)
    rm = out["reward_model"]
    assert rm["accuracy"] == pytest.approx(2 / 3)
    assert rm["accuracy_longer_preferred"] == 1.0 and rm["accuracy_shorter_preferred"] == 0.0
    assert rm["share_longer_preferred"] == 1.0 and rm["length_ties"] == 1  # the model picks the longer in 3 of 3 unequal pairs
    assert out["labels"]["share_longer_preferred"] == pytest.approx(1 / 2)


def test_non_length_gain_by_hand():
    # Buckets of 20: [0,20) before {0, 1} vs after {1}: +0.5, n = 3; [20,40) before {2} vs after {3, 5}: +2, n = 3;
    # [40,60) only after -> skipped. NRG = (3·0.5 + 3·2) / 6 = 1.25; Δ = 18/4 − 3/3 = 3.5.
    out = non_length_gain([5, 15, 25], [0.0, 1.0, 2.0], [10, 30, 35, 50], [1.0, 3.0, 5.0, 9.0], width=20)
    assert out["reward_gain"] == pytest.approx(3.5)
    assert out["non_length_gain"] == pytest.approx(1.25)
    assert out["non_length_share"] == pytest.approx(1.25 / 3.5)
    assert out["skipped"] == {"buckets": 1, "before": 0, "after": 1}
    assert [b["used"] for b in out["buckets"]] == [True, True, False]


def test_a_gain_that_is_only_length_has_no_non_length_gain():
    # Same reward for the same length; the policy just got longer.
    out = non_length_gain([5, 25], [0.0, 1.0], [25, 45], [1.0, 2.0], width=20)
    assert out["reward_gain"] == pytest.approx(1.0) and out["non_length_gain"] == pytest.approx(0.0)
    assert out["skipped"] == {"buckets": 2, "before": 1, "after": 1}


# --- tiny models and the CLIs --------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arena")
    p0, p1 = tiny_llama(root / "p0", seed=0), tiny_llama(root / "p1", seed=1)
    out = {"p0": p0, "p1": p1}
    for seed, kind in ((2, "reward"), (3, "cost")):
        torch.manual_seed(seed)
        ScoreModel.from_base(p0, kind=kind).save_pretrained(root / kind, load_score_tokenizer(p0))
        out[kind] = root / kind
    return out


def test_response_length_units_and_scorer_kinds(models):
    tokenizer = load_score_tokenizer(models["reward"])
    text = "I cannot help with that request."
    assert response_length(tokenizer, text, "words") == 6
    assert response_length(tokenizer, text, "tokens") == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    with pytest.raises(DataError, match="'reward' model was given where a 'cost'"):
        load_scorer(str(models["reward"]), "cost")  # a swapped reward/cost would flip a sign silently


def test_arena_cli(models, tmp_path):
    out = tmp_path / "arena"
    proc = run_cli("eval", "arena", "--red", str(models["p0"]), "--blue", str(models["p1"]), "--policy", f"twin={models['p0']}",
                   "--prompts", PROMPTS, "--limit", "4", "--max-new-tokens", "4", "--reward", str(models["reward"]),
                   "--cost", str(models["cost"]), "--bootstrap", "200", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["policies"]) == ["red", "blue", "twin"] and metrics["prompts"] == 4
    ratings = [p["rating"] for p in metrics["policies"].values()]
    assert np.mean(ratings) == pytest.approx(1000.0)
    for p in metrics["policies"].values():
        assert p["rating_ci95"][0] <= p["rating"] + 1e-6 and p["rating"] <= p["rating_ci95"][1] + 1e-6
    assert len(metrics["pairs"]) == 3
    for pair in metrics["pairs"]:
        assert pair["win"] + pair["tie"] + pair["lose"] == 4 and sum(map(sum, pair["safety_table"]["counts"])) == 4
    twins = next(p for p in metrics["pairs"] if (p["a"], p["b"]) == ("red", "twin"))
    assert twins["tie"] == 4  # the same greedy policy gives the same answers, scored identically
    assert twins["safety_table"]["counts"][0][1] == twins["safety_table"]["counts"][1][0] == 0
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]["answers"]) == {"red", "blue", "twin"}
    unsafe_red = np.mean([r["answers"]["red"]["cost"] > 0 for r in rows])
    assert metrics["policies"]["red"]["unsafe_share"] == pytest.approx(unsafe_red)
    assert (out / "arena.png").stat().st_size > 0


def test_arena_enters_a_policy_behind_the_guard(models, tmp_path):
    from tiny import tiny_bert

    from safealign.config import build_config
    from safealign.moderation.guard import DEFAULT_REFUSAL
    from safealign.moderation.train import ModerationConfig, train_moderator

    cfg = build_config(ModerationConfig, None, ["--model", str(tiny_bert(tmp_path / "encoder")), "--data", str(DATA / "pku_saferlhf/v1_test_sample.jsonl"),
                                                "--output_dir", str(tmp_path / "mod"), "--max_steps", "1", "--num_threads", "1"])
    train_moderator(cfg)
    meta_path = tmp_path / "mod" / "model" / "moderation_config.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "threshold": 0.0}))  # flags every answer: the guard must refuse all
    out = tmp_path / "arena"
    proc = run_cli("eval", "arena", "--red", str(models["p0"]), "--blue", str(models["p1"]), "--guard", "red",
                   "--guard-moderator", str(tmp_path / "mod" / "model"), "--guard-rounds", "2", "--prompts", PROMPTS,
                   "--limit", "3", "--max-new-tokens", "4", "--reward", str(models["reward"]), "--cost", str(models["cost"]),
                   "--bootstrap", "0", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["policies"]) == ["red", "blue", "red+guard"] and len(metrics["pairs"]) == 3
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert all(r["answers"]["red+guard"]["response"] == DEFAULT_REFUSAL for r in rows)
    proc = run_cli("eval", "arena", "--red", str(models["p0"]), "--blue", str(models["p1"]), "--guard", "green",
                   "--guard-moderator", "m", "--prompts", PROMPTS, "--reward", "r", "--cost", "c")
    assert proc.returncode != 0 and "guard: green: not a policy of this arena (policies: red, blue)" in proc.stderr


def test_length_cli(models, tmp_path):
    out = tmp_path / "length"
    proc = run_cli("eval", "length", "--reward", str(models["reward"]), "--data", PAIRS, "--before", str(models["p0"]),
                   "--after", str(models["p1"]), "--prompts", PROMPTS, "--limit", "4", "--max-new-tokens", "6",
                   "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    pref = metrics["preference"]
    assert pref["pairs"] == 32 and pref["responses"] == 64 and -1 <= pref["pearson"] <= 1
    labels = pref["labels"]
    assert labels["longer_preferred"] + labels["shorter_preferred"] + labels["length_ties"] == 32
    pol = metrics["policies"]
    assert pol["prompts"] == 4
    assert pol["reward_gain"] == pytest.approx(pol["mean_reward_after"] - pol["mean_reward_before"])
    assert sum(b["before"] for b in pol["buckets"]) == sum(b["after"] for b in pol["buckets"]) == 4
    assert metrics["unit"].startswith("tokens")
    assert (out / "length.png").stat().st_size > 0


# --- the reward-model side of "A Long Way to Go" -------------------------------------------


def _pp(prompt, chosen_words, rejected_words, tag):
    from safealign.data.records import PreferencePair

    return PreferencePair(prompt=prompt, chosen=" ".join(["c"] * chosen_words) + f" {tag}",
                          rejected=" ".join(["r"] * rejected_words) + f" {tag}", origin=f"f:{tag}")


def test_length_balance_and_off_prompt_pairs_by_hand():
    from safealign.data.length import length_balanced, off_prompt_pairs
    from safealign.data.records import DualPreferencePair

    # bucket 0 (preferred answer < 10 words): 3 longer-preferred, 1 shorter-preferred, 1 tie; bucket 1: 2 and 2
    records = [_pp("p", 5, 2, "a"), _pp("p", 6, 3, "b"), _pp("q", 7, 1, "c"), _pp("q", 2, 8, "d"), _pp("p", 4, 4, "e"),
               _pp("q", 15, 5, "f"), _pp("p", 12, 3, "g"), _pp("q", 11, 19, "h"), _pp("p", 13, 14, "i"),
               DualPreferencePair(prompt="z", response_0="x", response_1="y", better_response_id=None, safer_response_id=0)]
    kept, report = length_balanced(records, "better", bucket_width=10, seed=0)
    assert (report.read, report.kept, report.dropped, report.not_pairs) == (10, 8, 2, 1)
    assert report.longer_preferred_before == pytest.approx(5 / 8) and report.longer_preferred_after == 0.5
    tags = {r.chosen.split()[-1] for r in kept if hasattr(r, "chosen")}
    assert {"d", "e", "f", "g", "h", "i"} <= tags and len(tags & {"a", "b", "c"}) == 1  # one longer-preferred kept in bucket 0
    extra = off_prompt_pairs(records[:4], 0.5, "better", seed=1)
    assert len(extra) == 2
    for pair in extra:  # the prompt's own preferred answer over a preferred answer to the other prompt
        own = next(r for r in records[:4] if r.chosen == pair.chosen)
        other = next(r for r in records[:4] if r.chosen == pair.rejected)
        assert own.prompt == pair.prompt != other.prompt
    assert off_prompt_pairs(records[:2], 1.0) == []  # one prompt only: no off-prompt answer to take


def test_confidence_truncation_by_hand():
    from safealign.data.length import confidence_truncated
    from safealign.data.records import DualPreferencePair

    records = [_pp("p", 5, 2, "a"), _pp("p", 2, 6, "b"), _pp("q", 7, 1, "c"), _pp("q", 3, 8, "d"), _pp("p", 9, 4, "e"),
               DualPreferencePair(prompt="z", response_0="x", response_1="y", better_response_id=None, safer_response_id=0)]
    margins = [0.5, -1.0, 2.0, 0.1, 1.5, None]
    kept, report = confidence_truncated(records, margins, 0.4, "least")  # round(0.4 × 5 scored) = 2: b (−1.0) and d (0.1)
    assert [r.origin for r in kept] == ["f:a", "f:c", "f:e", records[5].origin]
    assert (report.read, report.kept, report.dropped, report.not_scored) == (6, 4, 2, 1)
    assert report.mean_margin_before == pytest.approx(3.1 / 5) and report.mean_margin_after == pytest.approx(4.0 / 3)
    assert report.longer_preferred_before == pytest.approx(3 / 5) and report.longer_preferred_after == 1.0
    kept, report = confidence_truncated(records, margins, 0.4, "most")  # c (2.0) and e (1.5)
    assert [r.origin for r in kept[:3]] == ["f:a", "f:b", "f:d"] and report.longer_preferred_after == pytest.approx(1 / 3)
    kept, _ = confidence_truncated(records, margins, 0.4, "both")  # one from each end: b and c
    assert [r.origin for r in kept[:3]] == ["f:a", "f:d", "f:e"]
    with pytest.raises(ValueError, match="margins for"):
        confidence_truncated(records, margins[:2], 0.4)


def test_train_reward_with_confidence_truncation(tmp_path):
    model = str(tiny_llama(tmp_path / "m"))
    common = ("--model", model, "--data", str(DATA / "pku_saferlhf/v1_test_sample.jsonl"), "--max_steps", "1",
              "--per_device_batch_size", "2", "--max_length", "64", "--num_threads", "1", "--save_every", "0", "--eval_every", "0")
    proc = run_cli("train", "reward", *common, "--output_dir", str(tmp_path / "out"), "--confidence_truncation", "0.25")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out/first-pass/model").is_dir() and (tmp_path / "out/model").is_dir()
    line = next(x for x in proc.stdout.splitlines() if x.startswith("confidence truncation (least"))
    read, kept, dropped = (int(re.search(word + r" (\d+)", line).group(1)) for word in ("read", "kept", "dropped"))
    assert read == kept + dropped and dropped == round(0.25 * read)
    again = run_cli("train", "reward", *common, "--output_dir", str(tmp_path / "out"), "--confidence_truncation", "0.25")
    assert again.returncode == 0 and "first pass in " + str(tmp_path / "out/first-pass") + " is done, reusing it" in again.stdout
    given = run_cli("train", "reward", *common, "--output_dir", str(tmp_path / "given"), "--confidence_truncation", "0.25",
                    "--truncate", "most", "--confidence_model", str(tmp_path / "out/model"))
    assert given.returncode == 0, given.stderr[-2000:]
    assert not (tmp_path / "given/first-pass").exists() and "confidence truncation (most confident" in given.stdout
    bad = run_cli("train", "reward", *common, "--output_dir", str(tmp_path / "bad"), "--confidence_model", str(tmp_path / "out/model"))
    assert bad.returncode != 0 and "confidence_model: given without confidence_truncation" in bad.stderr


def test_train_reward_with_length_balance_and_off_prompt_pairs(tmp_path):
    proc = run_cli("train", "reward", "--model", str(tiny_llama(tmp_path / "m")), "--data", str(DATA / "pku_saferlhf/v1_test_sample.jsonl"),
                   "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--per_device_batch_size", "2", "--max_length", "64",
                   "--num_threads", "1", "--save_every", "0", "--eval_every", "0", "--length_balance", "--off_prompt_pairs", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "length balance: read " in proc.stdout and "off-prompt pairs: " in proc.stdout
    bad = run_cli("train", "cost", "--model", str(tmp_path / "m"), "--data", str(DATA / "pku_saferlhf/v1_test_sample.jsonl"),
                  "--output_dir", str(tmp_path / "cost"), "--max_steps", "1", "--off_prompt_pairs", "0.5")
    assert bad.returncode != 0 and "off_prompt_pairs: for reward models" in bad.stderr
