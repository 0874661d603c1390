"""The shared loop and the score-model tasks, on tiny random models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA, two_process_launch
from tiny import tiny_llama

from safealign.config import build_config
from safealign.data.load import load
from safealign.evaluate.preference import evaluate_preference
from safealign.models.score import ScoreModel, load_score_tokenizer
from safealign.train.config import LoopConfig
from safealign.train.loop import Task, TrainingError, latest_checkpoint, train
from safealign.train.score import ScoreTrainConfig, train_score_model

V1 = str(DATA / "pku_saferlhf/v1_test_sample.jsonl")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def score_config(tiny: Path, out: Path, *extra: str) -> ScoreTrainConfig:
    base = ["--model", str(tiny), "--data", V1, "--output_dir", str(out), "--max_length", "64",
            "--warmup_ratio", "0", "--eval_every", "0", "--save_every", "0", "--num_threads", "2"]
    return build_config(ScoreTrainConfig, None, base + list(extra))


def test_cost_model_learns_the_sign_and_the_order(tiny, tmp_path):
    cfg = score_config(tiny, tmp_path, "--eval_data", V1, "--max_steps", "120", "--per_device_batch_size", "8", "--learning_rate", "3e-3")
    final = train_score_model(cfg, "cost")
    assert final["eval/accuracy"] >= 0.9 and final["eval/accuracy_sign"] >= 0.85
    model = ScoreModel.from_pretrained(tmp_path / "model")
    report = evaluate_preference(model, load_score_tokenizer(tmp_path / "model"), load(V1).records, max_length=64)
    assert report.accuracy == pytest.approx(final["eval/accuracy"])  # the saved folder scores as in training
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(report.scores_safe) < 0 < mean(report.scores_unsafe)  # safe below zero, unsafe above


def test_full_fine_tune_changes_every_parameter(tiny, tmp_path):
    cfg = score_config(tiny, tmp_path, "--max_steps", "3", "--per_device_batch_size", "4", "--learning_rate", "1e-3")
    before = {k: v.clone() for k, v in ScoreModel.from_base(tiny).state_dict().items() if not k.startswith("norm_")}
    train_score_model(cfg, "reward")
    after = ScoreModel.from_pretrained(tmp_path / "model").state_dict()
    unchanged = [k for k, v in before.items() if not k.startswith("head.") and torch.equal(v, after[k])]
    assert unchanged == []
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2, 3]
    assert {"train/loss", "train/accuracy", "train/lr", "train/grad_norm"} <= metrics[0].keys()


def test_every_module_trains_in_train_mode(tiny, tmp_path, monkeypatch):
    # transformers loads a backbone in eval mode under a ScoreModel root that says training:
    # dropout and gradient checkpointing would silently stay off if only the root were checked.
    from safealign.train import score

    seen: list[bool] = []
    original = score._pair_scores

    def recording(model, batch):
        seen.append(all(m.training for m in model.modules()))
        return original(model, batch)

    monkeypatch.setattr(score, "_pair_scores", recording)
    train_score_model(score_config(tiny, tmp_path, "--max_steps", "3", "--per_device_batch_size", "4",
                                   "--validation_split", "0"), "reward")
    assert seen == [True, True, True]


def test_gradient_accumulation_matches_a_big_batch(tiny, tmp_path):
    heads = []
    for per_device, accumulate in ((8, 1), (1, 8)):
        out = tmp_path / f"{per_device}x{accumulate}"
        cfg = score_config(tiny, out, "--max_steps", "3", "--per_device_batch_size", str(per_device),
                           "--gradient_accumulation_steps", str(accumulate), "--learning_rate", "1e-3", "--validation_split", "0")
        train_score_model(cfg, "reward")
        heads.append(ScoreModel.from_pretrained(out / "model").state_dict())
    for key in heads[0]:
        torch.testing.assert_close(heads[0][key], heads[1][key], atol=2e-5, rtol=1e-4)


def test_attribute_model_trains_on_steerlm(tiny, tmp_path):
    data = str(DATA / "helpsteer/steerlm_regression_8.jsonl")
    cfg = build_config(ScoreTrainConfig, None, ["--model", str(tiny), "--data", data, "--eval_data", data, "--output_dir", str(tmp_path),
                                                "--max_steps", "40", "--per_device_batch_size", "4", "--learning_rate", "5e-3", "--max_length", "64",
                                                "--warmup_ratio", "0", "--eval_every", "0", "--save_every", "0"])
    final = train_score_model(cfg, "attributes")
    model = ScoreModel.from_pretrained(tmp_path / "model")
    assert model.score_names == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    assert final["eval/mae"] < 1.0  # targets span 0–4; a fresh head sits near 0, an MAE of ~2.5


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(2, 1)
        self.calls = 0


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = _Linear()

    def loss(m, batch):
        m.calls += 1
        value = m.w(batch["x"]).square().mean()
        return (value * float("nan") if m.calls >= 5 else value), {}

    task = Task(model=model, train_examples=[torch.ones(2)] * 8, eval_examples=[], lengths=[1] * 8,
                collate=lambda b: {"x": torch.stack(b)}, loss=loss, evaluate=lambda m, b: {}, export=lambda m, p: None)
    cfg = LoopConfig(output_dir=str(tmp_path), max_steps=10, per_device_batch_size=2, save_every=2, learning_rate=0.1)
    with pytest.raises(TrainingError) as err:
        train(task, cfg)
    assert "step 5: the loss is not finite (NaN/Inf)" in str(err.value)
    assert latest_checkpoint(tmp_path).name == "step-4" and str(latest_checkpoint(tmp_path)) in str(err.value)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "safealign", *args]


def _train_args(tiny: Path, out: Path) -> list[str]:
    return ["train", "cost", "--model", str(tiny), "--data", V1, "--output_dir", str(out), "--max_steps", "40",
            "--per_device_batch_size", "8", "--max_length", "256", "--save_every", "5", "--eval_every", "20",
            "--learning_rate", "1e-3", "--num_threads", "1"]


def test_resume_after_sigkill_gives_the_same_result(tiny, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_cli(*_train_args(tiny, straight)), check=True, env=env, capture_output=True, timeout=300)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*_train_args(tiny, killed)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-10").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final_metrics.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(_cli(*_train_args(tiny, killed)), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stdout
    a = json.loads((straight / "final_metrics.json").read_text())
    b = json.loads((killed / "final_metrics.json").read_text())
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-6), key
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert steps == list(range(1, 41))  # rows a killed run wrote past its checkpoint are not doubled


def test_two_processes_match_one(tiny, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--model", str(tiny), "--data", V1, "--max_steps", "4", "--max_length", "64", "--learning_rate", "1e-3",
              "--validation_split", "0.2", "--eval_every", "0", "--save_every", "0", "--num_threads", "1"]
    one = subprocess.run(_cli("train", "reward", *common, "--output_dir", str(tmp_path / "one"), "--per_device_batch_size", "4"),
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    # accelerate's torchrun launcher; with no GPU the processes talk over gloo on the CPU
    two = subprocess.run([*two_process_launch(), "train", "reward", *common, "--output_dir", str(tmp_path / "two"), "--per_device_batch_size", "2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "final_metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-4), key
    wa = ScoreModel.from_pretrained(tmp_path / "one" / "model").state_dict()
    wb = ScoreModel.from_pretrained(tmp_path / "two" / "model").state_dict()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-4, rtol=1e-3)


def test_lora_bf16_and_checkpointing_options_train_and_save(tiny, tmp_path):
    cfg = score_config(tiny, tmp_path, "--max_steps", "2", "--per_device_batch_size", "4", "--learning_rate", "1e-2",
                       "--lora.r", "4", "--lora.alpha", "8", "--mixed_precision", "bf16", "--gradient_checkpointing", "true")
    train_score_model(cfg, "cost")
    saved = tmp_path / "model"
    assert not any("adapter" in p.name for p in saved.iterdir())  # LoRA merged: the folder loads without peft
    after = ScoreModel.from_pretrained(saved).state_dict()
    base = ScoreModel.from_base(tiny).state_dict()
    changed = [k for k in base if not k.startswith(("head.", "norm_")) and not torch.equal(base[k], after[k])]
    assert changed and all("proj" in k for k in changed)  # only the LoRA-adapted projections moved


def test_eval_preference_cli(tiny, tmp_path):
    from conftest import run_cli

    cfg = score_config(tiny, tmp_path / "run", "--max_steps", "2", "--per_device_batch_size", "4")
    train_score_model(cfg, "cost")
    out = tmp_path / "eval"
    proc = run_cli("eval", "preference", "--model", str(tmp_path / "run" / "model"), "--data", V1, "--out", str(out), "--max-length", "64")
    assert proc.returncode == 0, proc.stderr
    assert "eval/accuracy_sign" in proc.stdout and "Cybercrime" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "cost" and metrics["pairs"] == 100 and 0 <= metrics["accuracy"] <= 1
    assert metrics["per_category"]["Cybercrime"]["pairs"] >= 1
    assert (out / "score_histogram.png").read_bytes()[:4] == b"\x89PNG"
    bad = run_cli("eval", "preference", "--model", str(tmp_path), "--data", V1)
    assert bad.returncode == 1 and "not a safealign score-model folder" in bad.stderr
