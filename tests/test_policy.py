"""Policy training (SFT, DPO, SafeDPO) on a tiny random Llama and the real bundled data."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA, run_cli, two_process_launch
from tiny import tiny_llama, tiny_tokenizer

from safealign.config import ConfigError, build_config
from safealign.data.errors import DataError
from safealign.data.load import load
from safealign.data.records import DualPreferencePair, PreferencePair, PromptRecord, QARecord, dialogue
from safealign.models.score import LoraSettings
from safealign.train import policy
from safealign.train.dpo import DPOConfig, collate_pairs, dpo_batch_loss, dpo_examples, preference_pair, reference_logprobs, train_dpo
from safealign.models.template import render_prompt
from safealign.train.policy import IGNORE, collate_sequences, encode_response, load_policy, save_policy, sequence_logprobs
from safealign.train.sft import SFTConfig, sft_examples, sft_response, train_sft

V1 = str(DATA / "pku_saferlhf/v1_test_sample.jsonl")
V0 = str(DATA / "pku_saferlhf/v0_pairs_32.json")
HH = str(DATA / "hh_rlhf/harmless-base_test.jsonl.gz")
QA = str(DATA / "beavertails/unsafe_qa_140.csv")
CHAT = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}<eos>"
        "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def config(cls, tiny: Path, out: Path, *extra: str):
    data = [] if "--data" in extra else ["--data", V1]  # a repeated --data would collect both
    base = ["--model", str(tiny), *data, "--output_dir", str(out), "--max_length", "128", "--warmup_ratio", "0",
            "--eval_every", "0", "--save_every", "0", "--num_threads", "1", "--per_device_batch_size", "8"]
    return build_config(cls, None, base + list(extra))


def unmasked(example: dict[str, list[int]]) -> list[int]:
    return [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE]


def test_prompt_tokens_are_masked_and_the_response_is_learned_with_eos():
    tokenizer = tiny_tokenizer()
    records = load([V1]).records[:20] + load([HH], strict=False).records[:20]  # single and multi-turn dialogues
    for template, lead in ((None, " "), (CHAT, "")):  # the plain layout's space goes with the first word
        tokenizer.chat_template = template
        for r in records:
            response = r.response_0 if isinstance(r, DualPreferencePair) else r.chosen
            e = encode_response(tokenizer, dialogue(r), response, 10_000)
            n_prompt = len(tokenizer(render_prompt(tokenizer, dialogue(r)), add_special_tokens=template is None)["input_ids"])
            assert e["labels"][:n_prompt] == [IGNORE] * n_prompt
            assert e["labels"][n_prompt:] == e["input_ids"][n_prompt:] and IGNORE not in e["labels"][n_prompt:]
            assert tokenizer.decode(unmasked(e)) == lead + response + "<eos>"


def test_a_token_across_the_prompt_boundary_falls_back_to_separate_tokenisation():
    tokenizer = tiny_tokenizer()
    # The generation prompt ends in a space that BPE glues to the answer's first word (" the").
    tokenizer.chat_template = CHAT.replace("<|assistant|>\n", "Answer: ")
    turns = [{"role": "user", "content": "How does it end?"}]
    prompt = render_prompt(tokenizer, turns)
    full = tokenizer(prompt + "the end<eos>", add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert full[: len(prompt_ids)] != prompt_ids  # the case the fallback is for
    e = encode_response(tokenizer, turns, "the end", 64)
    assert e["input_ids"][: len(prompt_ids)] == prompt_ids and e["labels"][: len(prompt_ids)] == [IGNORE] * len(prompt_ids)
    assert tokenizer.decode(unmasked(e)) == "the end<eos>"


def test_truncation_keeps_the_response_and_the_end_of_the_prompt():
    tokenizer = tiny_tokenizer()
    turns = [{"role": "user", "content": "word " * 200}]
    e = encode_response(tokenizer, turns, "A short answer.", 40)
    assert len(e["input_ids"]) == 40 and tokenizer.decode(unmasked(e)) == " A short answer.<eos>"
    long = encode_response(tokenizer, turns, "answer " * 100, 40)
    assert len(long["input_ids"]) == 40 and long["labels"].count(IGNORE) == 20  # half the budget stays prompt


def test_which_response_sft_learns():
    pair = DualPreferencePair(prompt="p", response_0="helpful but unsafe", response_1="safe", better_response_id=0,
                              safer_response_id=1, is_response_0_safe=False, is_response_1_safe=True)
    pick = lambda r, **kw: sft_response(r, SFTConfig(model="m", data=["d"], **kw))  # noqa: E731
    assert pick(pair) == "safe" and pick(pair, response="better") is None
    assert pick(pair, response="better", safe_only=False) == "helpful but unsafe" and pick(pair, response="both") is None
    assert pick(QARecord(prompt="p", response="r", is_safe=False)) is None
    assert pick(QARecord(prompt="p", response="r", is_safe=False), safe_only=False) == "r"
    assert pick(PreferencePair(prompt="p", chosen="c", rejected="x")) == "c"
    with pytest.raises(DataError, match="prompt records have none"):
        pick(PromptRecord(prompt="p"))


def test_sft_lowers_the_response_nll_on_its_training_data(tiny, tmp_path):
    cfg = config(SFTConfig, tiny, tmp_path, "--eval_data", V1, "--max_steps", "40", "--learning_rate", "3e-3")
    model, tokenizer = load_policy(cfg.model, lora=cfg.lora)
    examples = sft_examples(load([V1]).records, cfg, tokenizer)
    assert len(examples) == sum(r.is_safe(r.safer_response_id) is not False for r in load([V1]).records)

    def nll(m: torch.nn.Module) -> float:
        with torch.no_grad():
            log_probs, tokens = sequence_logprobs(m, collate_sequences(examples, tokenizer.pad_token_id))
        return (-log_probs.sum() / tokens.sum()).item()

    before = nll(model)
    final = train_sft(cfg)
    assert final["eval/loss"] < before - 0.6  # ≈ log(vocab) = 5.95 at init
    assert final["eval/perplexity"] == pytest.approx(math.exp(final["eval/loss"]))
    from transformers import AutoModelForCausalLM

    assert nll(AutoModelForCausalLM.from_pretrained(tmp_path / "model")) == pytest.approx(final["eval/loss"], rel=1e-4)


def test_sft_refuses_data_with_nothing_to_learn(tiny, tmp_path):
    with pytest.raises(DataError, match="safe_only: false"):
        train_sft(config(SFTConfig, tiny, tmp_path, "--data", QA, "--max_steps", "1"))  # BeaverTails sample: all unsafe


def test_dpo_raises_the_margin_and_changes_every_parameter(tiny, tmp_path):
    cfg = config(DPOConfig, tiny, tmp_path, "--eval_data", V1, "--max_steps", "20", "--learning_rate", "3e-3")
    final = train_dpo(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]  # the policy starts as its reference: zero rewards, loss log 2
    assert first["train/loss"] == pytest.approx(math.log(2), abs=1e-5) and abs(first["train/reward_margin"]) < 1e-5
    assert final["eval/accuracy"] >= 0.8 and final["eval/reward_margin"] > 0.2
    assert {"train/reward_chosen", "train/reward_rejected", "train/reward_margin", "train/accuracy"} <= first.keys()
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    assert [k for k in before if torch.equal(before[k], after[k])] == []


def test_lora_reference_is_the_base_model_with_adapters_off(tiny):
    cfg = DPOConfig(model=str(tiny), data=[V1], lora=LoraSettings(r=4, alpha=8))
    model, tokenizer = load_policy(cfg.model, lora=cfg.lora)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # adapters that move the policy away from the base
    batch = collate_pairs(dpo_examples(load([V1]).records[:4], cfg, tokenizer), tokenizer.pad_token_id)
    model.train()
    chosen, rejected = reference_logprobs(model, batch)
    assert model.training  # restored after the eval-mode reference pass
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        base, _ = sequence_logprobs(AutoModelForCausalLM.from_pretrained(tiny), batch)
        adapted, _ = sequence_logprobs(model, batch)
    torch.testing.assert_close(torch.cat([chosen, rejected]), base)
    assert not torch.allclose(adapted, base)


def test_lora_dpo_loads_one_model_and_saves_a_plain_folder(tiny, tmp_path, monkeypatch):
    loads = []
    real_load, real_deepcopy = policy.load_causal_lm, copy.deepcopy
    monkeypatch.setattr(policy, "load_causal_lm", lambda *a, **kw: loads.append(a) or real_load(*a, **kw))

    def no_model_copies(value, memo=None):
        assert not isinstance(value, torch.nn.Module), "a second copy of the model was made"
        return real_deepcopy(value, memo)

    monkeypatch.setattr(copy, "deepcopy", no_model_copies)
    cfg = config(DPOConfig, tiny, tmp_path, "--eval_data", V1, "--max_steps", "20", "--learning_rate", "1e-2", "--lora.r", "8",
                 "--lora.alpha", "16", "--loss", "safe-dpo", "--gradient_checkpointing", "true")
    final = train_dpo(cfg)
    assert len(loads) == 1
    assert final["eval/reward_margin"] > 0 and final["eval/accuracy"] >= 0.6  # rank-8 q/v adapters: slower than full DPO
    saved = tmp_path / "model"
    assert not any("adapter" in p.name for p in saved.iterdir())
    from transformers import AutoModelForCausalLM

    after, info = AutoModelForCausalLM.from_pretrained(saved, output_loading_info=True)
    assert not any(info.values())  # no missing or unexpected keys: LoRA merged, no peft needed
    base = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    changed = [k for k, v in after.state_dict().items() if not torch.equal(base[k], v)]
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


def test_safe_dpo_chooses_the_safe_response_and_adds_the_margin(tiny):
    unsafe_better = DualPreferencePair(prompt="How do I pick a lock?", response_0="Insert a tension wrench and rake the pins.",
                                       response_1="I can't help with breaking into property.", better_response_id=0,
                                       safer_response_id=1, is_response_0_safe=False, is_response_1_safe=True)
    both_unsafe = DualPreferencePair(prompt="Insult me.", response_0="You are dim.", response_1="You are awful.",
                                     better_response_id=1, safer_response_id=0, is_response_0_safe=False, is_response_1_safe=False)
    dpo = DPOConfig(model=str(tiny), data=[V1], beta=0.5)
    safe = DPOConfig(model=str(tiny), data=[V1], beta=0.5, loss="safe-dpo", safety_margin=2.0)
    assert preference_pair(unsafe_better, dpo)[:4] == (unsafe_better.response_0, unsafe_better.response_1, 1, 0)
    assert preference_pair(unsafe_better, safe)[:4] == (unsafe_better.response_1, unsafe_better.response_0, 0, 1)
    assert preference_pair(both_unsafe, safe)[:4] == ("You are awful.", "You are dim.", 1, 1)  # no swap, no margin
    model, tokenizer = load_policy(safe.model, lora=safe.lora)
    examples = dpo_examples([unsafe_better, both_unsafe], safe, tokenizer)
    for e, ref in zip(examples, [(-50.0, -40.0), (-30.0, -35.0)]):
        e["reference"] = ref
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        loss, metrics = dpo_batch_loss(model, batch, safe)
        c0, c1, r0, r1 = sequence_logprobs(model, batch)[0].tolist()
    z0 = 0.5 * ((c0 + 50) - (r0 + 40)) - 2.0 * (1 - 0)  # safe chosen over unsafe: margin Δ
    z1 = 0.5 * ((c1 + 30) - (r1 + 35)) - 0.0  # two unsafe responses: plain DPO
    expected = (math.log1p(math.exp(-z0)) + math.log1p(math.exp(-z1))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["train/reward_margin"].item() == pytest.approx((z0 + 2.0 + z1) / 2, rel=1e-5)


def test_policy_configs_name_the_bad_field():
    with pytest.raises(ConfigError, match="loss: must be one of dpo, safe-dpo"):
        build_config(DPOConfig, None, ["--model", "m", "--data", "d", "--loss", "ipo"])
    with pytest.raises(ConfigError, match="beta: must be above 0"):
        build_config(DPOConfig, None, ["--model", "m", "--data", "d", "--beta", "0"])
    with pytest.raises(ConfigError, match="response: must be one of"):
        build_config(SFTConfig, None, ["--model", "m", "--data", "d", "--response", "chosen"])


def test_save_policy_merges_lora_into_a_plain_folder(tiny, tmp_path):
    model, tokenizer = load_policy(str(tiny), lora=LoraSettings(r=4))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    batch = collate_sequences([encode_response(tokenizer, [{"role": "user", "content": "Hi"}], "Hello there.", 64)], tokenizer.pad_token_id)
    save_policy(model, tokenizer, tmp_path)
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(AutoModelForCausalLM.from_pretrained(tmp_path), batch)[0],
                                   sequence_logprobs(model, batch)[0])
    assert "lora_B" in "".join(n for n, _ in model.named_parameters())  # the live model kept its adapters


@pytest.mark.parametrize("command, extra", [("sft", ["--response", "better", "--safe_only", "false"]),
                                            ("dpo", ["--loss", "safe-dpo", "--lora.r", "4", "--eval_data", V1])])
def test_train_policy_cli(tiny, tmp_path, command, extra):
    out = tmp_path / command
    proc = run_cli("train", command, "--model", str(tiny), "--data", V0, "--output_dir", str(out), "--max_steps", "3",
                   "--per_device_batch_size", "4", "--max_length", "96", "--num_threads", "1", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"model saved to {out / 'model'}" in proc.stdout and "final: eval/loss=" in proc.stdout
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    bad = run_cli("train", command, "--model", str(tiny), "--data", V0, "--max_step", "3")
    assert bad.returncode == 1 and "did you mean max_steps?" in bad.stderr


def test_two_process_dpo_matches_one(tiny, tmp_path):
    # Each process scores its share of the reference log-probs; the shares are gathered.
    common = ["--model", str(tiny), "--data", V1, "--max_steps", "4", "--max_length", "64", "--learning_rate", "1e-3", "--loss", "safe-dpo",
              "--validation_split", "0.2", "--eval_every", "0", "--save_every", "0", "--num_threads", "1", "--warmup_ratio", "0"]
    one = train_dpo(build_config(DPOConfig, None, [*common, "--output_dir", str(tmp_path / "one"), "--per_device_batch_size", "4"]))
    launch = [*two_process_launch(), "train", "dpo"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*launch, *common, "--output_dir", str(tmp_path / "two"), "--per_device_batch_size", "2"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    other = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    for key, value in one.items():
        assert other[key] == pytest.approx(value, abs=1e-4), key
