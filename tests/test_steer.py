"""Steerable policies: attribute values rendered into records, labelled from measures and models, learned by SteerLM, asked for at inference."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA, run_cli, write_jsonl
from tiny import tiny_llama

from safealign.data.errors import DataError
from safealign.data.records import AttributeRecord, QARecord, dialogue
from safealign.data.steer import (
    attribute_line,
    conditioned,
    harmlessness_from_safety,
    level_of,
    parse_attributes,
    quantile_levels,
    with_system,
)

V1 = DATA / "pku_saferlhf/v1_test_sample.jsonl"


def test_attribute_values_parse_and_render():
    values = parse_attributes("verbosity:1, helpfulness:4,harmlessness:4")
    assert values == {"verbosity": 1, "helpfulness": 4, "harmlessness": 4}
    assert attribute_line(values, "nemo") == "<extra_id_2>helpfulness:4,verbosity:1,harmlessness:4"  # STEER_ATTRIBUTES order
    assert attribute_line(values) == "Answer with these qualities, each on a 0-4 scale: helpfulness 4, verbosity 1, harmlessness 4."
    for bad, message in (("tone:3", "NAME one of"), ("verbosity:5", "integer 0–4"), ("verbosity:x", "integer"),
                         ("verbosity:1,verbosity:2", "twice"), ("", "empty")):
        with pytest.raises(DataError, match=message):
            parse_attributes(bad)


def test_conditioning_goes_into_the_prompt_side_only():
    record = QARecord(prompt="Name a river.", response="The Nile.", system="Be brief.")
    shown = conditioned(record, {"verbosity": 0}, "system")
    assert shown.system == "Be brief.\nAnswer with these qualities, each on a 0-4 scale: verbosity 0." and shown.response == "The Nile."
    nemo = conditioned(record, {"verbosity": 0}, "nemo")
    assert dialogue(nemo)[-1] == {"role": "user", "content": "Name a river.\n<extra_id_2>verbosity:0"}
    assert record.system == "Be brief." and record.prompt == "Name a river."  # the original is untouched
    assert with_system(record, "Answer in French.").system == "Answer in French." and with_system(record, None) is record


def test_direct_measures_by_hand():
    # ten values 1..10: quintile cut points at 1 + 9q = 2.8, 4.6, 6.4, 8.2
    levels, cuts = quantile_levels(list(range(1, 11)))
    assert cuts == pytest.approx([2.8, 4.6, 6.4, 8.2])
    assert levels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # v counts the cut points ≤ v: 3 > 2.8 -> level 1
    assert quantile_levels(list(range(1, 11)), reverse=True)[0] == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    assert level_of(5.0, cuts) == 2 and level_of(100.0, cuts, reverse=True) == 0
    assert [harmlessness_from_safety(*x) for x in ((True, 0), (False, 1), (False, 2), (False, 3), (False, None), (None, None))] == \
        [4, 2, 1, 0, 1, None]


def test_label_attributes_fills_by_source_order():
    from safealign.steer.label import LabelAttributesConfig, label_attributes

    records = [AttributeRecord(prompt="p", response="one two three", helpfulness=3.0),
               AttributeRecord(prompt="q", response=" ".join(["w"] * 40)),
               AttributeRecord(prompt="r", response="a b")]
    safety = [(True, 0), (None, None), (False, 3)]
    cfg = LabelAttributesConfig(data=["x"], model="ATTR", reward="RM", cost="CM")
    predicted = [[0.5, 1.0, 2.0, 3.0, 9.0]] * 3  # out of range: clamped to 4
    label_attributes(records, safety, cfg, predict=lambda d, r: predicted,
                     reward=lambda d, r, ids: torch.tensor([1.0, 2.0, 3.0]), cost=lambda d, r, ids: torch.tensor([0.0, 5.0, 1.0]))
    first, second, third = records
    assert first.helpfulness == 3.0 and first.meta["attributes_from"]["helpfulness"] == "source"  # the record's own value wins
    assert second.helpfulness == 0.5 and second.meta["attributes_from"]["helpfulness"] == "model ATTR"
    assert first.harmlessness == 4.0 and third.harmlessness == 0.0  # from the safety labels
    assert second.harmlessness == 0.0 and second.meta["attributes_from"]["harmlessness"] == "cost quintiles CM"  # highest cost
    assert [r.verbosity for r in records] == [2.0, 4.0, 0.0]  # lengths 3, 40, 2 words: length quintiles replace the model's 4.0
    assert second.meta["attributes_from"]["verbosity"] == "length quintiles (words)"


def test_label_attributes_and_train_steerlm_cli(tmp_path):
    from safealign.models.score import ScoreModel, load_score_tokenizer

    policy = tiny_llama(tmp_path / "policy")
    ScoreModel.from_base(policy, kind="reward").save_pretrained(tmp_path / "rm", load_score_tokenizer(policy))
    out = tmp_path / "attrs.jsonl"
    proc = run_cli("label", "attributes", "--data", str(V1), "--to", str(out), "--reward", str(tmp_path / "rm"), "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 200 and "→ 200 response(s)" in proc.stdout  # 100 pairs, two responses each
    assert all(r["record_type"] == "attribute" and r["verbosity"] is not None and r["harmlessness"] is not None for r in rows)
    assert sorted({r["harmlessness"] for r in rows}) <= [0.0, 1.0, 2.0, 4.0]
    train = run_cli("train", "steerlm", "--model", str(policy), "--data", str(out), "--output_dir", str(tmp_path / "steer"),
                    "--max_steps", "1", "--per_device_batch_size", "2", "--max_length", "64", "--num_threads", "1",
                    "--save_every", "0", "--eval_every", "0", "--attributes_style", "nemo", "--min_harmlessness", "1")
    assert train.returncode == 0, train.stderr[-2000:]
    assert "steerlm: left out" in train.stdout and (tmp_path / "steer/model").is_dir()
    assert "kind: steerlm" in (tmp_path / "steer/config.yaml").read_text()
    plain = run_cli("train", "steerlm", "--model", str(policy), "--data", str(V1), "--output_dir", str(tmp_path / "bad"), "--max_steps", "1")
    assert plain.returncode == 1 and "steerlm learns from attribute records" in plain.stderr


def test_steerlm_records_render_each_records_own_values():
    from safealign.train.sft import SteerLMConfig, steerlm_records

    cfg = SteerLMConfig(model="m", data=["x"], condition_on=["verbosity", "harmlessness"], min_harmlessness=1)
    records = [AttributeRecord(prompt="p", response="a", verbosity=3.6, harmlessness=4.0),
               AttributeRecord(prompt="q", response="b", verbosity=1.0, harmlessness=0.0),  # below min_harmlessness: left out
               AttributeRecord(prompt="r", response="c")]  # no values: learned unconditioned
    out = steerlm_records(records, cfg)
    assert [r.prompt for r in out] == ["p", "r"]
    assert out[0].system.endswith("verbosity 4, harmlessness 4.") and out[1].system is None


def test_generation_is_conditioned_but_judges_see_the_plain_prompt(tmp_path):
    from safealign.evaluate.safety import evaluate_safety
    from safealign.inference.generate import load_generator
    from safealign.inference.settings import PromptConditioning, SamplingSettings

    seen = {}

    class Judge:
        def predict(self, dialogues, responses, batch_size=32):
            from safealign.moderation.model import Verdict

            seen["judged"] = dialogues
            return [Verdict(False, 0.1, {}, {}, 0, [1.0, 0, 0, 0]) for _ in responses]

    model, tokenizer = load_generator(str(tiny_llama(tmp_path / "policy")))
    shown = []
    asked = PromptConditioning(system="Answer in one word.", attributes="verbosity:0").conditioning()

    def spy(record):
        shown.append(dialogue(asked(record)))
        return asked(record)

    records = [QARecord(prompt="Name a river.", response="")]
    evaluate_safety(model, tokenizer, records, Judge(), SamplingSettings(max_new_tokens=3, temperature=0), condition=spy)
    assert shown[0][0] == {"role": "system", "content": "Answer in one word.\nAnswer with these qualities, each on a 0-4 scale: verbosity 0."}
    assert seen["judged"] == [[{"role": "user", "content": "Name a river."}]]


def test_generate_cli_takes_system_and_attributes(tmp_path):
    policy = tiny_llama(tmp_path / "policy")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Name a river.", "response": ""}])
    system = tmp_path / "system.txt"
    system.write_text("Answer like a pirate.\n")
    ok = run_cli("generate", "--model", str(policy), "--prompts", str(prompts), "--out", str(tmp_path / "a.jsonl"),
                 "--max_new_tokens", "3", "--system", str(system), "--attributes", "verbosity:0,harmlessness:4")
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = run_cli("generate", "--model", str(policy), "--prompts", str(prompts), "--attributes", "loudness:9")
    assert bad.returncode == 1 and "loudness:9" in bad.stderr


# --- Janus: system-message preferences -------------------------------------------------------------


def _pair(safe0, safe1, better, safer, r0="Answer zero. It has two sentences.", r1="Answer one. Also two sentences."):
    from safealign.data.records import DualPreferencePair

    return DualPreferencePair(prompt="p", response_0=r0, response_1=r1, better_response_id=better, safer_response_id=safer,
                              is_response_0_safe=safe0, is_response_1_safe=safe1, origin="t:1")


def test_rules_are_checked_and_followed_by_hand():
    from safealign.steer.janus import adheres, make_adherent

    words = {"kind": "max_words", "value": 6}
    assert make_adherent(words, "One two three. Four five six seven. Eight.") == "One two three."  # whole sentences within 6 words
    assert make_adherent(words, "A very long first sentence with many words in it.") == "A very long first sentence."
    assert adheres(words, "One two three.") and not adheres(words, "one two three four five six seven")
    bullets = {"kind": "bullets", "min": 2}
    assert make_adherent(bullets, "First point. Second point!") == "- First point.\n- Second point!"
    assert make_adherent(bullets, "Only one sentence") is None
    assert adheres(bullets, "- a\n- b") and not adheres(bullets, "- a\nplain\nplain\nplain")
    closing = {"kind": "closing", "text": "Stay safe."}
    assert adheres(closing, make_adherent(closing, "Some answer.")) and not adheres(closing, "Some answer.")
    refusal = {"kind": "refusal_style", "start": "I can't help with that"}
    assert adheres(refusal, make_adherent(refusal, "whatever")) and not adheres(refusal, "Sure, here is how.")


def test_a_system_message_never_makes_an_unsafe_answer_chosen():
    from safealign.data.load import load
    from safealign.steer.janus import SystemMessage, load_bank, system_preference_pairs

    better = SystemMessage("b", "informativeness", "Be detailed.", "better", "train")
    safer = SystemMessage("s", "harmlessness", "Be careful.", "safer", "train")
    # both safe: each message picks its own response; one safe: both pick the safe one; both unsafe: no pair
    out, report = system_preference_pairs([_pair(True, True, 0, 1)], [better, safer], per_pair=2)
    assert {(p.system, p.chosen) for p in out} == {("Be detailed.", "Answer zero. It has two sentences."),
                                                   ("Be careful.", "Answer one. Also two sentences.")}
    out, _ = system_preference_pairs([_pair(False, True, 0, 1)], [better], per_pair=1)
    assert out[0].chosen == "Answer one. Also two sentences."  # the better answer is unsafe: the safe one wins
    out, report = system_preference_pairs([_pair(False, False, 0, 1)], [better, safer], per_pair=2)
    assert out == [] and report.skipped == {"no safe response to choose": 2}
    # on real pairs, with the whole bank: every chosen answer is a safe response (or a rule-following edit of one)
    records = load([str(V1)]).records
    bank = load_bank(split="train")
    pairs, report = system_preference_pairs(records, bank, per_pair=3, seed=1)
    assert pairs and report.read == len(records)
    safe_texts = {r.response(i) for r in records for i in (0, 1) if r.is_safe(i)}
    unsafe_texts = {r.response(i) for r in records for i in (0, 1) if r.is_safe(i) is False}
    for p in pairs:
        assert p.chosen not in unsafe_texts
        if p.meta["check"] is None:
            assert p.chosen in safe_texts
    assert {m.id for m in load_bank(split="test")}.isdisjoint({m.id for m in bank})  # held-out messages never train
    assert {m.text for m in load_bank(split="test")}.isdisjoint({p.system for p in pairs})


def test_build_janus_and_eval_steer_and_adherence_cli(tmp_path):
    policy = tiny_llama(tmp_path / "policy")
    built = run_cli("build", "janus", "--data", str(V1), "--to", str(tmp_path / "janus.jsonl"), "--per_pair", "2")
    assert built.returncode == 0, built.stderr[-2000:]
    assert "read 100 pair(s)" in built.stdout and "left out:" in built.stdout
    rows = [json.loads(line) for line in (tmp_path / "janus.jsonl").read_text().splitlines()]
    assert rows and all(r["record_type"] == "preference" and r["system"] for r in rows)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p, "response": ""} for p in ("Name a river.", "Spell cat.", "Count to 3.")])
    steer = run_cli("eval", "steer", "--policy", str(policy), "--prompts", str(prompts), "--values", "0", "--values", "4",
                    "--max_new_tokens", "4", "--temperature", "0", "--out", str(tmp_path / "steer"))
    assert steer.returncode == 0, steer.stderr[-2000:]
    metrics = json.loads((tmp_path / "steer/metrics.json").read_text())
    assert set(metrics["per_value"]) == {"unconditioned", "0", "4"} and metrics["per_value"]["0"]["answers"] == 3
    adherence = run_cli("eval", "adherence", "--policy", str(policy), "--prompts", str(prompts), "--harmful_prompts",
                        str(DATA / "beavertails/evaluation_700.json"), "--limit", "2", "--max_new_tokens", "4", "--temperature", "0",
                        "--out", str(tmp_path / "adh"))
    assert adherence.returncode == 0, adherence.stderr[-2000:]
    metrics = json.loads((tmp_path / "adh/metrics.json").read_text())
    assert metrics["messages"] == 6 and 0 <= metrics["adherence"] <= 1  # the six checkable held-out messages
    assert metrics["per_message"]["test-refusal"]["answers"] == 2


def test_label_attributes_with_an_attribute_model(tmp_path):
    from safealign.data.records import ATTRIBUTES
    from safealign.models.score import ScoreModel, load_score_tokenizer

    policy = tiny_llama(tmp_path / "policy")
    ScoreModel.from_base(policy, len(ATTRIBUTES), list(ATTRIBUTES), kind="attributes").save_pretrained(
        tmp_path / "attr", load_score_tokenizer(policy))
    out = tmp_path / "attrs.jsonl"
    proc = run_cli("label", "attributes", "--data", str(V1), "--to", str(out), "--model", str(tmp_path / "attr"),
                   "--limit", "6", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= r["correctness"] <= 4 for r in rows)
    assert rows[0]["meta"]["attributes_from"]["correctness"] == f"model {tmp_path / 'attr'}"
