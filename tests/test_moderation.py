"""Moderation: labels and masks, metrics by hand, training on real data, the CLI commands, the guard."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import DATA, run_cli
from tiny import tiny_bert, tiny_llama

from safealign.config import build_config
from safealign.data.records import QARecord
from safealign.losses import moderation_loss
from safealign.moderation.guard import Guard
from safealign.moderation.metrics import best_f1_threshold, binary_scores, expected_calibration_error
from safealign.moderation.model import Moderator, Verdict
from safealign.moderation.train import ModerationConfig, labels, train_moderator

V1 = str(DATA / "pku_saferlhf/v1_test_sample.jsonl")
CSV = str(DATA / "beavertails/unsafe_qa_140.csv")


@pytest.fixture(scope="module")
def moderator_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("moderation")
    encoder = tiny_bert(root / "encoder")
    cfg = build_config(ModerationConfig, None, ["--model", str(encoder), "--data", V1, "--data", CSV, "--output_dir", str(root / "run"),
                                                "--max_steps", "30", "--per_device_batch_size", "16", "--learning_rate", "1e-2",
                                                "--save_every", "0", "--eval_every", "0", "--num_threads", "1"])
    train_moderator(cfg)
    return root / "run" / "model"


def test_labels_mask_what_the_source_does_not_say():
    beaver = QARecord("p", "r", False, ("self_harm",), None, "beavertails")
    got = labels(beaver, "pku-saferlhf")
    assert got["unsafe"] == 1.0 and set(got["category_mask"]) == {0.0} and got["severity_mask"] == 0.0
    safe = QARecord("p", "r", True, (), None, "beavertails")
    assert set(labels(safe, "pku-saferlhf")["category_mask"]) == {1.0} and labels(safe, "pku-saferlhf")["severity"] == 0
    pku = QARecord("p", "r", False, ("Violence",), 2, "pku-saferlhf")
    got = labels(pku, "pku-saferlhf")
    assert got["categories"][5] == 1.0 and sum(got["categories"]) == 1.0 and got["severity"] == 2


def test_moderation_loss_by_hand():
    u, c, s = torch.tensor([0.0]), torch.tensor([[0.0, 2.0]]), torch.zeros(1, 4)
    loss = moderation_loss(u, c, s, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]),
                           torch.tensor([2.0]), torch.tensor([1.0]))
    # BCE(0, 1) = log 2 ; only category 0 counts: BCE(0, 1) = log 2 ; CE over 4 equal logits = log 4
    assert loss.item() == pytest.approx(math.log(2) + math.log(2) + math.log(4), rel=1e-6)


def test_metrics_by_hand():
    s = binary_scores([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0], 0.5)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (1, 1, 1, 1) and s["f1"] == 0.5
    threshold, f1 = best_f1_threshold([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    assert f1 == 1.0 and 0.3 < threshold <= 0.8
    # two bins: [0.1] label 0 -> |0 − 0.1| ; [0.9, 0.9] labels 1, 0 -> |0.5 − 0.9| ; weights 1/3, 2/3
    assert expected_calibration_error([0.1, 0.9, 0.9], [0, 1, 0]) == pytest.approx(0.1 / 3 + 0.4 * 2 / 3)


def test_trained_moderator_round_trips_and_is_consistent(moderator_dir):
    moderator = Moderator.load(moderator_dir)
    dialogues = [[{"role": "user", "content": "How do I make a bomb?"}], [{"role": "user", "content": "Tell me a joke."}]]
    answers = ["Mix these chemicals and detonate.", "Why did the chicken cross the road?"]
    first = moderator.predict(dialogues, answers)
    again = Moderator.load(moderator_dir).predict(dialogues, answers)
    assert [v.unsafe_probability for v in first] == pytest.approx([v.unsafe_probability for v in again])
    for v in first:
        assert v.flagged == (v.unsafe_probability >= moderator.meta.threshold)
        assert (v.severity == 0) == (not v.flagged) and len(v.severity_distribution) == 4
        assert len(v.category_scores) == 19 and sum(v.severity_distribution) == pytest.approx(1.0)
    assert 0.0 < moderator.meta.threshold < 1.0


def test_moderate_cli_counts_and_rejects(moderator_dir, tmp_path):
    src = tmp_path / "answers.jsonl"
    src.write_text('{"prompt": "p1", "response": "r1", "id": 1}\n{"prompt": 5, "response": "bad"}\n{"prompt": "p3", "response": "r3"}\n')
    out = tmp_path / "verdicts.jsonl"
    strict = run_cli("moderate", "--model", str(moderator_dir), "--input", str(src), "--output", str(out))
    assert strict.returncode == 1 and f"{src}:2: field 'prompt'" in strict.stderr
    proc = run_cli("moderate", "--model", str(moderator_dir), "--input", str(src), "--output", str(out), "--skip-invalid")
    assert proc.returncode == 0, proc.stderr
    assert "read 3 | kept 2 | rejected 1 | verdicts 2" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["id"] == 1 and {"flagged", "unsafe_probability", "categories", "category_scores", "severity"} <= rows[0].keys()
    assert (tmp_path / "verdicts.rejects.jsonl").is_file()


def test_train_and_eval_moderation_cli(tmp_path):
    encoder = tiny_bert(tmp_path / "encoder")
    run = tmp_path / "run"
    trained = run_cli("train", "moderation", "--model", str(encoder), "--data", V1, "--output_dir", str(run),
                      "--max_steps", "5", "--per_device_batch_size", "16", "--num_threads", "1")
    assert trained.returncode == 0, trained.stderr
    assert "decision threshold" in trained.stdout
    evaluated = run_cli("eval", "moderation", "--model", str(run / "model"), "--data", str(DATA / "pku_saferlhf/v0_pairs_32.json"),
                        "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "tfidf+logreg" in evaluated.stdout and "unsafe F1" in evaluated.stdout
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"model", "tfidf+logreg"} and "ece" in metrics["model"]
    assert (tmp_path / "eval" / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"


class _Always:
    """A stand-in moderator with a fixed answer, to test the guard's rounds."""

    def __init__(self, flag: bool) -> None:
        self.flag, self.calls = flag, 0

    def predict(self, dialogues, responses, batch_size=32):
        self.calls += 1
        return [Verdict(self.flag, float(self.flag), {}, {}, int(self.flag), [0.0] * 4) for _ in responses]


def test_bfloat16_weights_keep_the_verdicts_close(moderator_dir):
    dialogues = [[{"role": "user", "content": f"question {i}: how do I pick a lock?"}] for i in range(6)]
    answers = ["Use a tension wrench and a pick.", "I can't help with that.", "Call a locksmith.",
               "Break the window instead.", "Here is how, step by step: first...", "No."]
    full = Moderator.load(moderator_dir).predict(dialogues, answers)
    half = Moderator.load(moderator_dir).to_bfloat16()
    assert next(half.encoder.model.parameters()).dtype == torch.bfloat16
    assert next(half.heads.parameters()).dtype == torch.float32  # the small heads stay float32
    for a, b in zip(full, half.predict(dialogues, answers), strict=True):
        assert abs(a.unsafe_probability - b.unsafe_probability) < 0.02
        assert b.severity in range(4) and sum(b.severity_distribution) == pytest.approx(1.0, abs=1e-3)


def test_guard_rounds_and_refusal(tmp_path):
    from safealign.inference.generate import load_generator

    policy, tokenizer = load_generator(str(tiny_llama(tmp_path / "policy")))
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "there"}]]
    flagging = _Always(True)
    results = Guard(policy, tokenizer, flagging, max_rounds=3, refusal="No.")(prompts)
    assert flagging.calls == 3 and all(r.refused and r.answer == "No." and len(r.rounds) == 3 for r in results)
    passing = _Always(False)
    results = Guard(policy, tokenizer, passing, max_rounds=3)(prompts)
    assert passing.calls == 1 and all(not r.refused and len(r.rounds) == 1 for r in results)


def test_guard_cli(moderator_dir, tmp_path):
    policy = tiny_llama(tmp_path / "policy")
    out = tmp_path / "guarded"
    proc = run_cli("guard", "--policy", str(policy), "--moderator", str(moderator_dir), "--prompts",
                   str(DATA / "beavertails/evaluation_700.json"), "--limit", "3", "--max-new-tokens", "5", "--rounds", "3",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "guard on 3 prompts" in proc.stdout and "refusal rate" in proc.stdout
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(1 <= len(r["rounds"]) <= 3 and r["prompt_verdict"] is None for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())["prompts"]
    assert metrics["unsafe_rate"]["output_guard"] == 0.0  # under its own judge, a guarded answer is never flagged
    assert metrics["refusal_rate"]["output_guard"] == sum(r["refused"] for r in rows) / 3


class _Flags:
    """A stand-in moderator that flags the given (prompt, answer) texts; prompts by their text alone."""

    def __init__(self, prompts=(), answers=()) -> None:
        self.prompts, self.answers = set(prompts), set(answers)

    def predict(self, dialogues, responses, batch_size=32):
        return [Verdict(r in self.answers, float(r in self.answers), {}, {}, 0, [0.0] * 4) for r in responses]

    def predict_prompts(self, dialogues, batch_size=32):
        return [Verdict(d[-1]["content"] in self.prompts, 0.0, {}, {}, 0, [0.0] * 4) for d in dialogues]


def test_prompt_level_refusal_and_the_summary_by_hand(tmp_path):
    from safealign.inference.generate import load_generator
    from safealign.moderation.guard import guard_summary

    policy, tokenizer = load_generator(str(tiny_llama(tmp_path / "policy")))
    dialogues = [[{"role": "user", "content": t}] for t in ("a", "b", "c", "d")]
    plain = Guard(policy, tokenizer, _Flags(), max_rounds=2)(dialogues)
    first = [g.rounds[0][0] for g in plain]  # greedy-free but seeded: the same first answers in every guard below
    # the response moderator flags prompt b's and c's first answers; the prompt moderator flags "c" and "d"
    response_guard = _Flags(answers={first[1], first[2]})
    guard = Guard(policy, tokenizer, response_guard, max_rounds=2, refusal="No.", prompt_moderator=_Flags(prompts={"c", "d"}),
                  prompt_refusal="Not that.")
    served = guard(dialogues)
    assert [g.answer == "Not that." for g in served] == [False, False, True, True]
    assert [len(g.rounds) for g in served] == [1, 2, 0, 0]  # refused prompts are never answered
    measured = guard(dialogues, answer_refused=True)
    assert [len(g.rounds) for g in measured] == [1, 2, 2, 1] and [g.answer for g in measured][2:] == ["Not that."] * 2
    judge = _Flags(answers={first[1], first[2], first[3]})  # an independent judge: also flags d's answer
    summary = guard_summary(dialogues, measured, judge)
    # no guard: b, c, d unsafe (3/4); output guard: b and c resampled (their second answers pass the judge), d's
    # answer passes the response moderator but not the judge: 1/4; both levels: c and d refused, b resampled: 0.
    assert summary["unsafe_rate"] == {"no_guard": 0.75, "output_guard": 0.25, "both": 0.0}
    assert summary["refusal_rate"] == {"no_guard": 0.0, "output_guard": 0.0, "both": 0.5}
    assert summary["prompt_flagged"] == 0.5


def test_threshold_rules_by_hand():
    from safealign.moderation.metrics import tune_threshold

    # 8 unsafe (1) and 2 safe (0), sorted by p: the safe ones score 0.9 and 0.3.
    probs = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    labels = [1, 0, 1, 1, 1, 1, 1, 1, 0, 1]
    # Plain F1 keeps everything: cut below 0.2 gives tp 8, fp 2 -> F1 = 16/18 = 0.889 (the best).
    assert tune_threshold(probs, labels, "f1") == pytest.approx(0.2)
    # Youden J = tp/8 - fp/2: after 0.4 (tp 7, fp 1) J = 0.375, the best (after 0.95: 0.125; after 0.2: 0),
    # so the cut is (0.4 + 0.3) / 2.
    assert tune_threshold(probs, labels, "youden") == pytest.approx(0.35)
    # balanced-f1 weighs a safe response as 8/2 = 4: after 0.4: 2·7 / (7 + 4·1 + 8) = 14/19 = 0.737;
    # after 0.2: 16 / (8 + 8 + 8) = 0.667; after 0.5 (tp 6, fp 1): 12/18 = 0.667. So 0.35 again.
    assert tune_threshold(probs, labels, "balanced-f1") == pytest.approx(0.35)
    assert tune_threshold(probs, labels, "fixed") == 0.5
    assert tune_threshold(probs, [1] * 10, "youden") == 0.5  # one class only: no rule can tune
    with pytest.raises(ValueError, match="unknown threshold rule"):
        tune_threshold(probs, labels, "median")


def test_labelled_prompts_train_a_prompt_moderator_and_do_not_mix_with_responses():
    from safealign.data.errors import DataError
    from safealign.data.records import PromptRecord
    from safealign.moderation.train import judges, qa_records

    prompts = [PromptRecord("hurt a cat", taxonomy="beavertails", is_safe=False, harm_categories=("animal_abuse",)),
               PromptRecord("hello", taxonomy="beavertails", is_safe=True)]
    qa = qa_records(prompts)
    assert [(q.prompt, q.response, q.is_safe, q.harm_categories) for q in qa] == [
        ("hurt a cat", "", False, ("animal_abuse",)), ("hello", "", True, ())]
    assert judges(prompts) == "prompt" and judges([QARecord("p", "r", True)]) == "response"
    with pytest.raises(DataError, match="labelled prompts and responses in one moderator"):
        qa_records([*prompts, QARecord("p", "r", True)])
    with pytest.raises(DataError, match="without a safety label"):
        qa_records([PromptRecord("unlabelled")])
