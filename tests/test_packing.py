"""Pair packing (safealign.models.packing): the layout by hand, and exactness against padded rows."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from tiny import tiny_llama
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from safealign.models.packing import PackingRule, last_token_places, pack_pairs, packed_length, shared_prefix
from safealign.models.score import LoraSettings, ScoreModel
from safealign.train.dpo import collate_pairs
from safealign.train.policy import IGNORE, policy_packing_rule, load_policy, sequence_logprobs
from safealign.train.score import _pair_scores, collate

VOCAB = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def test_shared_prefix_leaves_each_sequence_a_token() -> None:
    assert shared_prefix([1, 2, 3, 4], [1, 2, 5]) == 2
    assert shared_prefix([1, 2, 3], [1, 2, 3]) == 2  # identical: the last token stays each one's own
    assert shared_prefix([7, 2], [1, 2]) == 0
    assert shared_prefix([1], [1, 2, 3]) == 0
    assert packed_length([1, 2, 3, 4], [1, 2, 5]) == 5


def test_pack_pairs_layout_by_hand() -> None:
    packed = pack_pairs([([1, 2, 3, 4], [1, 2, 5]), ([6, 7], [8])], pad_id=0)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]
    allowed = packed["attention_mask"][:, 0].int().tolist()
    assert allowed[0] == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # b's own token 5 sees the prefix 1 2 and itself, not a's 3 4
    ]
    assert allowed[1] == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],  # no shared prefix: b starts afresh
        [0, 0, 0, 1, 0],  # padding sees itself only
        [0, 0, 0, 0, 1],
    ]
    assert packed["rows"].tolist() == [0, 1, 0, 1]
    assert packed["lengths"].tolist() == [4, 2, 3, 1]
    assert packed["index"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0], [0, 1, 4, 0], [2, 0, 0, 0]]
    assert last_token_places(packed).tolist() == [[0, 3], [1, 1], [0, 4], [1, 2]]


def _pairs(seed: int = 0) -> list[dict]:
    """Pairs with shared prompts of different lengths, plus an identical pair and one with no prefix."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(3):
        prompt = torch.randint(3, VOCAB, (5 + i,), generator=g).tolist()
        a = torch.randint(3, VOCAB, (4 + 2 * i,), generator=g).tolist()
        b = torch.randint(3, VOCAB, (7 - i,), generator=g).tolist()
        pairs.append((prompt, a, b))
    pairs.append(([5, 6], [7], [7]))
    pairs.append(([], [9, 6, 7, 8], [5, 6, 7]))
    return pairs


def _causal_lm(arch: str, folder: Path) -> str:
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        ))
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        ))
    model.save_pretrained(folder)
    return str(folder)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    return grads


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_scores_and_gradients_equal_padded(tmp_path: Path, arch: str, attention: str) -> None:
    model = ScoreModel.from_base(_causal_lm(arch, tmp_path), 1)
    model.backbone.config._attn_implementation = attention
    assert model.packable
    batch = [{"a": p + a, "b": p + b, "sign_a": 0, "sign_b": 0} for p, a, b in _pairs()]
    plain, packed = collate(batch, 0), collate(batch, 0, True)
    assert plain["num_tokens"] == packed["num_tokens"] == sum(len(e["a"]) + len(e["b"]) for e in batch)
    assert packed["input_ids"].numel() < plain["input_ids"].numel()
    first, second = _pair_scores(model, plain)
    (first - 2 * second).sum().backward()
    expected = _grads(model)
    first_p, second_p = _pair_scores(model, packed)
    assert_close(first_p, first, atol=1e-5, rtol=1e-5)
    assert_close(second_p, second, atol=1e-5, rtol=1e-5)
    (first_p - 2 * second_p).sum().backward()
    for got, want in zip(_grads(model), expected, strict=True):
        assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_encoders_are_not_packed(tmp_path: Path) -> None:
    BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4)).save_pretrained(tmp_path)
    model = ScoreModel.from_base(str(tmp_path), 1)
    assert not model.packable  # a bidirectional prompt sees its response: nothing to share
    packed = collate([{"a": [1, 2, 3], "b": [1, 2, 4], "sign_a": 0, "sign_b": 0}], 0, True)
    with pytest.raises(ValueError, match="causal backbone"):
        _pair_scores(model, packed)


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_dpo_logprobs_equal_padded(tmp_path: Path, lora: LoraSettings | None, attention: str) -> None:
    model, _ = load_policy(str(tiny_llama(tmp_path / "policy")), lora=lora)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config._attn_implementation = attention
    assert policy_packing_rule(model) is not None
    batch = [
        {
            "chosen": {"input_ids": p + a, "labels": [IGNORE] * len(p) + a},
            "rejected": {"input_ids": p + b, "labels": [IGNORE] * len(p) + b},
            "unsafe_chosen": 0, "unsafe_rejected": 1,
        }
        for p, a, b in _pairs(1) if p  # DPO examples always have a prompt
    ]
    plain, packed = collate_pairs(batch, 0), collate_pairs(batch, 0, True)
    assert plain["num_tokens"] == packed["num_tokens"]
    log_probs, counts = sequence_logprobs(model, plain)
    (log_probs * torch.arange(1.0, len(log_probs) + 1)).sum().backward()
    expected = _grads(model)
    log_probs_p, counts_p = sequence_logprobs(model, packed)
    assert counts_p.tolist() == counts.tolist() == [len(a) for _, a, _ in _pairs(1)[:4]] + [len(b) for *_, b in _pairs(1)[:4]]
    assert_close(log_probs_p, log_probs, atol=1e-4, rtol=1e-5)
    (log_probs_p * torch.arange(1.0, len(log_probs) + 1)).sum().backward()
    got = _grads(model)
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_packing_rule_weighs_positions_against_attention() -> None:
    shared = [([1] * 40 + [2] * 10, [1] * 40 + [3] * 10)]  # 60 packed positions instead of 2 × 50
    disjoint = [([1] * 50, [2] * 50)]  # nothing shared: packing only lengthens the row
    dense = PackingRule(per_position=1000.0, per_key=1.0)
    # packed 60 × 1000 + 60² = 63,600 < 0.95 × 2 × (50 × 1000 + 50² / 2) = 97,375
    assert dense.pays(shared)
    # packed 100 × 1000 + 100² = 110,000 > 97,375
    assert not dense.pays(disjoint)
    # attention-bound: the packed row's full square, 10 × 60² = 36,000, against the padded rows'
    # causal triangles, 2 × 10 × 50² / 2 = 25,000: never worth it
    attention_bound = PackingRule(per_position=1.0, per_key=10.0)
    assert not attention_bound.pays(shared)
    rule = PackingRule.for_config(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2), output_size=100)
    assert rule.per_position == 2 * 2 * (4 * 32 * 32 + 3 * 32 * 64) + 2 * 32 * 100
    assert rule.per_key == 2 * 4 * 32
