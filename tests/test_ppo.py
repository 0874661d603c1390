"""PPO-Lagrangian on a controlled task with a known best feasible policy.

The policy writes 8 tokens. Reward = mean per token of 1.0 for "a", 0.5 for "b", 0 else;
cost = share of "a" − 0.25, constraint E[cost] ≤ 0. The reward-maximising policy writes only
"a" (reward 1, cost 0.75: infeasible); the best feasible one writes 25% "a" and 75% "b"
(reward 0.625, cost 0). PPO-Lagrangian must end feasible (J_C ≤ 0.05) with reward ≥ 0.9 ×
0.625; plain PPO on the same task must end infeasible.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_word_llama

from safealign.config import build_config
from safealign.train.ppo import PPOConfig, train_ppo

WORDS = ["go", "a", "b", "c"]
LENGTH = 8
BEST_FEASIBLE = 0.25 * 1.0 + 0.75 * 0.5


def _token_ids(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")


def make_scorers(folder):
    a, b = _token_ids(folder)

    def reward(dialogues, texts, ids):
        return torch.tensor([sum(1.0 if t == a else 0.5 if t == b else 0.0 for t in row) / len(row) for row in ids])

    def cost(dialogues, texts, ids):
        return torch.tensor([sum(t == a for t in row) / len(row) - 0.25 for row in ids])

    return reward, cost


def run(folder, out, algorithm, steps):
    cfg = build_config(PPOConfig, None, [
        "--actor", str(folder), "--output_dir", str(out), "--max_steps", str(steps), "--rollout_batch_size", "64",
        "--minibatch_size", "32", "--ppo_epochs", "2", "--max_new_tokens", str(LENGTH), "--min_new_tokens", str(LENGTH),
        "--learning_rate", "3e-3", "--critic_learning_rate", "3e-3", "--warmup_ratio", "0", "--lr_scheduler", "constant",
        "--kl_coef", "0.01", "--lambda_lr", "0.1", "--episode_cost_window", "128", "--save_every", "0", "--num_threads", "2",
        "--critic_init", "actor", "--seed", "1",
    ])
    reward, cost = make_scorers(folder)
    prompts = [[{"role": "user", "content": "go"}]] * 8
    train_ppo(cfg, algorithm, reward_fn=reward, cost_fn=cost, prompts=prompts)
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tail = rows[-10:]
    return {k: sum(r[k] for r in tail) / len(tail) for k in ("train/reward", "train/episode_cost")}, rows


@pytest.mark.slow
def test_lagrangian_meets_the_constraint_and_plain_ppo_does_not(tmp_path):
    folder = tiny_word_llama(tmp_path / "policy", WORDS)
    lag, lag_rows = run(folder, tmp_path / "lag", "ppo-lag", 120)
    ppo, _ = run(folder, tmp_path / "ppo", "ppo", 60)
    print(f"ppo-lag end: reward {lag['train/reward']:.3f} J_C {lag['train/episode_cost']:.3f} lambda {lag_rows[-1]['train/lambda']:.3f}")
    print(f"ppo end:     reward {ppo['train/reward']:.3f} J_C {ppo['train/episode_cost']:.3f}")
    assert lag["train/episode_cost"] <= 0.0 + 0.05
    assert lag["train/reward"] >= 0.9 * BEST_FEASIBLE
    assert ppo["train/episode_cost"] > 0.0


def _score_folders(tmp_path, tiny_folder):
    from safealign.models.score import ScoreModel, load_score_tokenizer

    folders = {}
    for kind in ("reward", "cost"):
        model = ScoreModel.from_base(tiny_folder, kind=kind)
        model.save_pretrained(tmp_path / kind, load_score_tokenizer(tiny_folder))
        folders[kind] = tmp_path / kind
    return folders


def test_ppo_lag_cli_with_model_scorers_and_lora(tmp_path):
    import json

    from conftest import DATA, run_cli
    from tiny import tiny_llama

    policy = tiny_llama(tmp_path / "policy")
    folders = _score_folders(tmp_path, policy)
    out = tmp_path / "run"
    proc = run_cli("train", "ppo-lag", "--actor", str(policy), "--reward_model", str(folders["reward"]),
                   "--cost_model", str(folders["cost"]), "--prompts", str(DATA / "beavertails/evaluation_700.json:0.02"),
                   "--output_dir", str(out), "--max_steps", "2", "--rollout_batch_size", "4", "--minibatch_size", "2",
                   "--max_new_tokens", "6", "--lora.r", "4", "--num_threads", "1", "--learning_rate", "1e-3")
    assert proc.returncode == 0, proc.stderr
    assert "memory estimate" in proc.stdout and "cost critic" in proc.stdout and "reference" not in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    names = {"train/reward", "train/cost", "train/episode_cost", "train/constraint_violation", "train/lambda", "train/kl",
             "train/entropy", "train/response_length", "train/actor_loss", "train/reward_critic_loss", "train/cost_critic_loss"}
    assert names <= rows[-1].keys() and [r["step"] for r in rows] == [1, 2]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "model") is not None  # LoRA merged: loads without peft


def test_critics_start_from_the_actor_when_a_score_model_cannot(tmp_path, capsys):
    from conftest import DATA
    from tiny import tiny_bert, tiny_llama

    from safealign.models.score import ScoreModel, load_score_tokenizer
    from safealign.train.ppo import critic_source

    policy = tiny_llama(tmp_path / "policy")
    reward = _score_folders(tmp_path, policy)["reward"]
    words = tiny_word_llama(tmp_path / "words", WORDS)  # another tokenizer
    ScoreModel.from_base(words, kind="cost").save_pretrained(tmp_path / "word-cost", load_score_tokenizer(words))
    encoder = tiny_bert(tmp_path / "bert")  # the actor's tokenizer, but bidirectional
    ScoreModel.from_base(encoder, kind="cost").save_pretrained(tmp_path / "cost", load_score_tokenizer(encoder))
    cfg = PPOConfig(actor=str(policy), reward_model=str(reward), cost_model=str(tmp_path / "cost"),
                    prompts=[str(DATA / "beavertails/evaluation_700.json:0.02")], output_dir=str(tmp_path / "run"),
                    max_steps=1, rollout_batch_size=4, minibatch_size=2, max_new_tokens=6, num_threads=1)
    assert critic_source(cfg, cfg.reward_model) == str(reward)  # same tokenizer, causal: the reward model starts it
    assert critic_source(cfg, str(tmp_path / "word-cost")) == str(policy)
    assert "uses another tokenizer than the actor" in capsys.readouterr().out
    train_ppo(cfg, "ppo-lag")  # the BERT cost model scores the text; its critic starts from the actor
    assert "is not a causal model" in capsys.readouterr().out
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_resume_restores_lambda_window_and_sampling(tmp_path):
    import json

    from tiny import tiny_word_llama

    folder = tiny_word_llama(tmp_path / "policy", WORDS)
    reward, cost = make_scorers(folder)
    prompts = [[{"role": "user", "content": "go"}]] * 4
    common = ["--actor", str(folder), "--rollout_batch_size", "8", "--minibatch_size", "4", "--max_new_tokens", "4",
              "--min_new_tokens", "4", "--learning_rate", "1e-2", "--lr_scheduler", "constant", "--warmup_ratio", "0",
              "--critic_init", "actor", "--num_threads", "1", "--save_every", "1", "--lambda_lr", "0.5", "--episode_cost_window", "12"]
    straight = build_config(PPOConfig, None, [*common, "--output_dir", str(tmp_path / "a"), "--max_steps", "4"])
    train_ppo(straight, "ppo-lag", reward_fn=reward, cost_fn=cost, prompts=prompts)
    first = build_config(PPOConfig, None, [*common, "--output_dir", str(tmp_path / "b"), "--max_steps", "2"])
    train_ppo(first, "ppo-lag", reward_fn=reward, cost_fn=cost, prompts=prompts)
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and len(state["lagrange"]["costs"]) == 12  # window of 12 after 16 episodes
    second = build_config(PPOConfig, None, [*common, "--output_dir", str(tmp_path / "b"), "--max_steps", "4"])
    train_ppo(second, "ppo-lag", reward_fn=reward, cost_fn=cost, prompts=prompts)
    a = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("train/lambda", "train/episode_cost", "train/reward", "train/actor_loss"):
        assert b[-1][key] == pytest.approx(a[-1][key], abs=1e-5), key


@pytest.mark.parametrize("launch, words", [("accelerate_zero3.yaml", "DeepSpeed ZeRO-3 on 8 processes"),
                                           ("accelerate_fsdp.yaml", "FSDP FULL_SHARD on 8 processes")])
def test_7b_configs_dry_run_prints_the_memory_estimate(launch, words):
    from pathlib import Path

    from conftest import run_cli

    scale = Path(__file__).parents[1] / "configs" / "scale"
    proc = run_cli("train", "ppo-lag", "--config", str(scale / "ppo_lag_7b.yaml"), "--dry_run",
                   "--accelerate_config", str(scale / launch), cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    assert words in proc.stdout and "dry run: config checked" in proc.stdout
    actor = next(line for line in proc.stdout.splitlines() if line.startswith("actor"))
    assert "6772.0M" in actor and "33.55M" in actor  # 7B weights, LoRA r=64 trainable
    total = float(next(line for line in proc.stdout.splitlines() if line.startswith("total")).split()[-1].rstrip("G"))
    assert 5 < total < 40  # fits one 40–80 GB GPU per process once sharded over 8


def test_ppo_lag_on_two_processes_matches_one_at_the_same_global_batch(tmp_path):
    # DDP over gloo on the CPU, through `accelerate launch`: 2 processes × 2 prompts = 1 process × 4.
    # Each prompt is sampled with a seed keyed by its global draw, so both runs draw the same
    # rollouts; equal lengths (min = max new tokens) make per-process token means the global ones.
    import json
    import os
    import subprocess

    from conftest import run_cli, two_process_launch, write_jsonl
    from transformers import AutoModelForCausalLM

    policy = tiny_word_llama(tmp_path / "policy", WORDS)
    folders = _score_folders(tmp_path, policy)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"record_type": "prompt", "prompt": p} for p in
                                                       ("go a", "go b", "a b", "b c", "c a", "go c", "a go", "b go")])
    common = ["--actor", str(policy), "--reward_model", str(folders["reward"]), "--cost_model", str(folders["cost"]),
              "--prompts", str(prompts), "--max_steps", "3", "--ppo_epochs", "2", "--max_new_tokens", "4",
              "--min_new_tokens", "4", "--learning_rate", "1e-2", "--critic_learning_rate", "1e-2", "--warmup_ratio", "0",
              "--lr_scheduler", "constant", "--save_every", "0", "--num_threads", "1", "--seed", "3",
              "--lambda_lr", "0.5", "--episode_cost_window", "4", "--cost_limit", "-0.5"]
    one = run_cli("train", "ppo-lag", *common, "--output_dir", str(tmp_path / "one"), "--rollout_batch_size", "4",
                  "--minibatch_size", "4")
    assert one.returncode == 0, one.stderr[-3000:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*two_process_launch(), "train", "ppo-lag", *common, "--output_dir", str(tmp_path / "two"),
                          "--rollout_batch_size", "2", "--minibatch_size", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("one", "two")]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [1, 2, 3]
    assert len({r["train/lambda"] for r in rows[0]}) == 3  # λ moved every step: the comparison covers its update
    for a, b in zip(*rows):
        for key in ("train/reward", "train/cost", "train/episode_cost", "train/lambda", "train/kl", "train/entropy",
                    "train/actor_loss", "train/reward_critic_loss", "train/cost_critic_loss", "train/approx_kl"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    wa, wb = (AutoModelForCausalLM.from_pretrained(tmp_path / run / "model").state_dict() for run in ("one", "two"))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-4)


def test_length_interventions_by_hand():
    from safealign.inference.scoring import LengthScorer
    from safealign.losses import length_adjusted_reward, standardise

    reward, lengths = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([12, 24, 48])
    got = length_adjusted_reward(reward, lengths, 48, penalty=0.5)
    assert got.tolist() == pytest.approx([1 - 0.125, 1 - 0.25, 0.5])
    assert length_adjusted_reward(reward, lengths, 48, long_outputs="zero").tolist() == [1.0, 1.0, 0.0]  # never ended
    scaled = standardise(torch.tensor([1.0, 2.0, 3.0]))
    assert scaled.tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-5)
    assert LengthScorer(8)([], ["", ""], [[1, 2], [1, 2, 3, 4, 5, 6, 7, 8]]).tolist() == [0.25, 1.0]
    with pytest.raises(ValueError, match="long_outputs must be keep, zero or skip"):
        length_adjusted_reward(reward, lengths, 48, long_outputs="drop")


def test_length_only_reward_and_skipped_long_outputs(tmp_path):
    import json

    folder = tiny_word_llama(tmp_path / "words", WORDS)
    common = ["--actor", str(folder), "--max_steps", "2", "--rollout_batch_size", "8", "--minibatch_size", "4",
              "--max_new_tokens", str(LENGTH), "--save_every", "0", "--num_threads", "1", "--critic_init", "actor",
              "--warmup_ratio", "0"]
    prompts = [[{"role": "user", "content": "go"}]] * 8
    cfg = build_config(PPOConfig, None, [*common, "--reward_model", "length", "--output_dir", str(tmp_path / "length")])
    train_ppo(cfg, "ppo", prompts=prompts)  # no reward model folder: the reward is the answer's length
    rows = [json.loads(line) for line in (tmp_path / "length" / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["train/reward"] == pytest.approx(row["train/response_length"] / LENGTH, rel=1e-5)
    reward, _ = make_scorers(folder)
    cfg = build_config(PPOConfig, None, [*common, "--min_new_tokens", str(LENGTH), "--long_outputs", "skip",
                                         "--output_dir", str(tmp_path / "skip")])
    train_ppo(cfg, "ppo", reward_fn=reward, prompts=prompts)  # every answer uses all 8 tokens: nothing to learn from
    rows = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train/actor_loss"] == 0.0 and r["train/reward_critic_loss"] == 0.0 for r in rows)
    assert all(r["train/response_length"] == LENGTH for r in rows)  # the metrics still cover every answer
