"""What must hold in RL before any learning: the log-probs are the sampler's, step 1 is a no-op, modes and signs.

- at temperature T the stored old log-probs equal the sampler's own log-probs of the drawn tokens;
- the per-row sampler draws from softmax(logits / T) (top-k, top-p), and a row's draw does not depend on its batch;
- on step 1 the KL to the reference is 0 and the PPO ratio is 1 on the first minibatch;
- rollouts, old log-probs and old values run in eval mode (no dropout), updates in train mode;
- the two log-prob implementations (rollouts, SFT/DPO) agree on the same tokens;
- generation and training tokenise a prompt identically (bos included);
- a normalised cost model keeps its zero; the Lagrange multiplier's two optimisers.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from conftest import DATA
from test_ppo import WORDS, make_scorers
from tiny import tiny_llama, tiny_tokenizer, tiny_word_llama

from safealign.config import ConfigError, build_config
from safealign.data.load import load
from safealign.inference.generate import generate_answers
from safealign.train import ppo
from safealign.train.lagrange import LagrangeMultiplier
from safealign.train.policy import IGNORE, collate_sequences, encode_response, load_policy, sequence_logprobs
from safealign.train.ppo import PPOConfig, train_ppo
from safealign.inference.sampling import RowSampler, SamplingSettings, encode_prompts, row_seed, sample, token_log_probs

pytestmark = pytest.mark.usefixtures("one_thread")
DIALOGUES = [[{"role": "user", "content": text}] for text in ("How do I bake bread?", "Tell me a joke", "Why is the sky blue?")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def _rollout(actor, tokenizer, temperature: float, seed: int = 0):
    ids, mask = encode_prompts(tokenizer, DIALOGUES, 64)
    torch.manual_seed(seed)
    return sample(actor, tokenizer, ids, mask, SamplingSettings(max_new_tokens=6, temperature=temperature)), ids, mask


def test_old_log_probs_are_the_samplers_own_at_temperature(tiny) -> None:
    actor, tokenizer = load_policy(str(tiny))
    actor.eval()
    ids, mask = encode_prompts(tokenizer, DIALOGUES, 64)
    settings = SamplingSettings(max_new_tokens=6, temperature=0.7)
    sampler = RowSampler(0.7, 1.0, 0, [row_seed(0, i) for i in range(len(DIALOGUES))], record=True)
    rollout = sample(actor, tokenizer, ids, mask, settings, sampler=sampler)
    drawn = rollout.sequences[:, ids.size(1):]
    response = rollout.response_mask.bool()
    recorded = torch.stack(sampler.log_probs, dim=1)[:, : drawn.size(1)]  # size = (B, T, V): what each token was drawn from
    own = recorded.gather(-1, drawn.unsqueeze(-1)).squeeze(-1)
    ours, _ = token_log_probs(actor, rollout, temperature=0.7)
    torch.testing.assert_close(ours[response], own[response], atol=1e-5, rtol=1e-5)
    untempered, _ = token_log_probs(actor, rollout)  # what the old code stored: the wrong distribution
    assert (untempered[response] - own[response]).abs().max() > 1e-2


def test_the_row_sampler_draws_from_softmax_of_logits_over_temperature_with_top_k_and_top_p() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    draws = 20_000
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.8)):
        expected = (logits / temperature).softmax(-1)[0]
        if top_k:
            expected[top_k:] = 0
        if top_p < 1:  # softmax = .644 .237 .087 .032: the first two reach 0.8
            expected[2:] = 0
        expected = expected / expected.sum()
        sampler = RowSampler(temperature, top_p, top_k, [row_seed(1, i) for i in range(draws)])
        picks = sampler(torch.zeros(draws, 1, dtype=torch.long), logits.expand(draws, -1)).argmax(-1)
        counts = torch.bincount(picks, minlength=4).float() / draws
        torch.testing.assert_close(counts, expected, atol=0.015, rtol=0)  # ~4 standard errors at 20k draws


def test_a_rows_draw_depends_on_its_seed_not_on_its_batch(tiny) -> None:
    actor, tokenizer = load_policy(str(tiny))
    actor.eval()
    records = load(str(DATA / "beavertails/evaluation_700.json")).records[:4]
    settings = SamplingSettings(max_new_tokens=6, temperature=1.0, seed=5)
    together = [a for _, a in generate_answers(actor, tokenizer, records, settings, batch_size=4)]
    apart = [a for _, a in generate_answers(actor, tokenizer, records, settings, batch_size=1)]
    assert together == apart
    other = [a for _, a in generate_answers(actor, tokenizer, records, SamplingSettings(max_new_tokens=6, seed=6), batch_size=4)]
    assert other != together  # the seed matters


def test_the_two_log_prob_implementations_agree(tiny) -> None:
    actor, tokenizer = load_policy(str(tiny))
    actor.eval()
    rollout, ids, mask = _rollout(actor, tokenizer, 1.0)
    per_token, _ = token_log_probs(actor, rollout)
    encoded = []
    for row, prompt_mask, response in zip(ids, mask, rollout.response_ids):
        prompt = row[prompt_mask.bool()].tolist()
        encoded.append({"input_ids": prompt + response, "labels": [IGNORE] * len(prompt) + response})
    with torch.no_grad():
        sums, counts = sequence_logprobs(actor, collate_sequences(encoded, tokenizer.pad_token_id))
    torch.testing.assert_close(sums, (per_token * rollout.response_mask).sum(-1), atol=1e-4, rtol=1e-5)
    assert counts.tolist() == rollout.response_mask.sum(-1).tolist()


def test_generation_and_training_tokenise_a_prompt_identically_bos_included() -> None:
    from tokenizers import processors

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    assert tokenizer("hi")["input_ids"][0] == tokenizer.bos_token_id  # a tokenizer that adds a bos, no chat template
    ids, mask = encode_prompts(tokenizer, DIALOGUES, 512)
    for row, prompt_mask, dialogue in zip(ids, mask, DIALOGUES):
        generated_from = row[prompt_mask.bool()].tolist()
        trained = encode_response(tokenizer, dialogue, "Fine.", 512)
        n_prompt = trained["labels"].index(next(t for t in trained["labels"] if t != IGNORE))
        assert generated_from[0] == tokenizer.bos_token_id
        assert generated_from == trained["input_ids"][:n_prompt]


def _ppo(folder, out, *extra: str) -> list[dict]:
    cfg = build_config(PPOConfig, None, [
        "--actor", str(folder), "--output_dir", str(out), "--rollout_batch_size", "8", "--minibatch_size", "8",
        "--ppo_epochs", "1", "--max_new_tokens", "6", "--learning_rate", "1e-2", "--warmup_ratio", "0",
        "--save_every", "0", "--num_threads", "1", "--critic_init", "actor", "--temperature", "0.7", *extra])
    reward, cost = make_scorers(folder)
    train_ppo(cfg, "ppo-lag", reward_fn=reward, cost_fn=cost, prompts=[[{"role": "user", "content": "go"}]] * 8)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", [False, True], ids=["reference-copy", "lora-reference"])
def test_step_one_has_zero_kl_and_a_ratio_of_one(tmp_path, lora: bool) -> None:
    folder = tiny_word_llama(tmp_path / "policy", WORDS)
    rows = _ppo(folder, tmp_path / "run", "--max_steps", "2", *(["--lora.r", "4"] if lora else []))
    first = rows[0]
    assert first["step"] == 1
    assert first["train/kl"] == 0.0  # π_old = π_ref before any update, at the same temperature
    assert first["train/approx_kl"] < 1e-9 and first["train/clip_fraction"] == 0.0  # ratio 1 on the first minibatch
    assert rows[1]["train/kl"] != 0.0  # and the update did move the policy


def test_rollouts_and_old_values_run_in_eval_mode_and_updates_in_train_mode(tmp_path, monkeypatch) -> None:
    seen: list[tuple[str, bool, bool]] = []
    for name in ("token_log_probs", "critic_values"):
        original = getattr(ppo, name)

        def spy(model, *args, _original=original, _name=name, **kwargs):
            seen.append((_name, torch.is_grad_enabled(), all(not m.training for m in model.modules())
                         if not torch.is_grad_enabled() else all(m.training for m in model.modules())))
            return _original(model, *args, **kwargs)

        monkeypatch.setattr(ppo, name, spy)
    folder = tiny_word_llama(tmp_path / "policy", WORDS)
    _ppo(folder, tmp_path / "run", "--max_steps", "2")
    rollout_calls = [s for s in seen if not s[1]]
    update_calls = [s for s in seen if s[1]]
    assert len(rollout_calls) == 2 * 4 and len(update_calls) == 2 * 3  # per step: old, ref, 2 old values; actor, 2 critics
    assert all(mode_ok for _, _, mode_ok in seen), seen


def test_ppo_refuses_samplers_its_log_probs_do_not_describe(tmp_path) -> None:
    base = ["--actor", "x", "--output_dir", str(tmp_path)]
    for extra, message in ((["--top_p", "0.9"], "top_p: must be 1.0 for PPO"),
                           (["--repetition_penalty", "1.2"], "repetition_penalty: must be 1.0 for PPO"),
                           (["--temperature", "0"], "temperature: must be above 0")):
        with pytest.raises(ConfigError, match=message):
            build_config(PPOConfig, None, base + extra).validate()
    assert PPOConfig(actor="a", reward_model="r").max_steps == 100  # the default is a documented field, not a hidden `or 100`


def test_prompt_batches_are_one_permutation_per_pass() -> None:
    cfg = PPOConfig(actor="a", reward_model="r", rollout_batch_size=4, seed=3)
    prompts = list(range(10))
    drawn = [p for step in range(1, 6) for p in ppo._prompt_batch(prompts, cfg, step, 0, 1)]  # 20 draws: two passes
    for epoch in range(2):
        order = list(range(10))
        random.Random(3 * 7919 + epoch).shuffle(order)
        assert drawn[10 * epoch : 10 * epoch + 10] == order
    shards = [ppo._prompt_batch(prompts, cfg, 1, rank, 2) for rank in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(ppo._prompt_batch(prompts, PPOConfig(actor="a", reward_model="r", rollout_batch_size=8, seed=3), 1, 0, 1))


def test_a_normalised_cost_model_keeps_its_zero() -> None:
    from transformers import LlamaConfig, LlamaModel

    from safealign.models.score import ScoreModel

    backbone = LlamaModel(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1))
    scores = torch.tensor([[1.0], [3.0], [5.0]])  # mean 3, population std sqrt(8/3)
    std = math.sqrt(8 / 3)
    for kind, expected in (("cost", scores / std), ("reward", (scores - 3.0) / std)):
        model = ScoreModel(backbone, kind=kind)
        model.update_normalizer(scores)
        torch.testing.assert_close(model.normalize(scores), expected)
    cost = ScoreModel(backbone, kind="cost")
    cost.update_normalizer(scores)
    signs = torch.tensor([[-2.0], [0.5], [4.0]])
    assert torch.equal(torch.sign(cost.normalize(signs)), torch.sign(signs))  # c > 0 still means unsafe


def test_lagrange_multiplier_adam_takes_steps_of_about_the_learning_rate() -> None:
    sgd = LagrangeMultiplier(initial=1.0, learning_rate=0.1, window=1, maximum=100.0)
    adam = LagrangeMultiplier(initial=1.0, learning_rate=0.1, window=1, maximum=100.0, optimizer="adam")
    assert math.log(sgd.update([20.0])) == pytest.approx(0.1 * 20.0)  # SGD: η·(J_C − d)·λ = 2.0
    # Adam's first step: m̂ = g, v̂ = g², so log λ moves by η·|g| / (|g| + ε) ≈ η, in the direction of J_C − d.
    assert math.log(adam.update([20.0])) == pytest.approx(0.1 * 20.0 / (20.0 + 1e-8), rel=1e-9)
    g = -20.0 * math.exp(0.1 * 20.0 / (20.0 + 1e-8))  # the second gradient at the new λ
    m, v = 0.9 * 0.1 * -20.0 + 0.1 * g, 0.999 * 0.001 * 400.0 + 0.001 * g * g
    second = 0.1 * (m / (1 - 0.9**2)) / (math.sqrt(v / (1 - 0.999**2)) + 1e-8)
    before = adam.log_value
    adam.update([20.0])
    assert adam.log_value == pytest.approx(before - second, rel=1e-9)
    resumed = LagrangeMultiplier(initial=1.0, learning_rate=0.1, window=1, maximum=100.0, optimizer="adam")
    resumed.load_state_dict(json.loads(json.dumps(adam.state_dict())))
    assert resumed.update([-5.0]) == adam.update([-5.0])  # Adam's moments travel with checkpoints
    with pytest.raises(ValueError, match="sgd or adam"):
        LagrangeMultiplier(optimizer="rmsprop")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_every_ppo_model_is_built_on_the_device_in_the_dtype(tiny, tmp_path, lora: bool) -> None:
    from safealign.models.score import LoraSettings, ScoreModel, load_score_tokenizer

    for kind in ("reward", "cost"):
        ScoreModel.from_base(tiny, kind=kind).save_pretrained(tmp_path / kind, load_score_tokenizer(tiny))
    cfg = PPOConfig(actor=str(tiny), reward_model=str(tmp_path / "reward"), cost_model=str(tmp_path / "cost"),
                    dtype="bfloat16", lora=LoraSettings(r=4) if lora else None)
    device = torch.device("cpu")
    m = ppo.build_models(cfg, "ppo-lag", None, None, device)
    assert (m.reference is None) == lora  # with adapters the reference is the actor without them
    models = {"actor": m.actor, "reference": m.reference, "reward critic": m.reward_critic,
              "cost critic": m.cost_critic, "reward": m.reward.model, "cost": m.cost.model}
    for role, model in models.items():
        if model is None:
            continue
        for name, parameter in model.named_parameters():
            adapter = "lora_" in name
            assert parameter.dtype == (torch.float32 if adapter else torch.bfloat16), (role, name, parameter.dtype)
            assert parameter.device == device, (role, name)
    rows = {row.role: row for row in ppo.memory_rows(cfg, "ppo-lag")}
    assert ("reference" in rows) == (not lora)
    for role in ("actor", "reward critic", "cost critic", "reward", "cost"):
        built = models[role]
        used = sum(p.numel() * p.element_size() for p in built.parameters())  # the bytes the built model's weights take
        # Exact but for a LoRA critic's score head (hidden + 1 weights), trainable yet in the backbone's dtype.
        assert rows[role].weights == pytest.approx(used, rel=0.005), (role, rows[role].weights, used)
