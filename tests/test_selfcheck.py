"""Fast paths that rely on library internals check themselves and fall back (safealign.models.selfcheck).

Each "upstream change" here is simulated by monkeypatching the library the way a release
could change it; the scores, updates and clipped gradients must then equal the public path's,
with one FallbackWarning.
"""

from __future__ import annotations

import functools
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported

import warnings

import pytest
import torch
from test_readout import CONFIGS, VOCAB, full_scores, random_rows, score_model
from transformers import AutoModel, GPT2Config
from transformers.models.llama import modeling_llama

from safealign.models import selfcheck
from safealign.models.packing import can_pack, check_packing, last_token_places, mask_for, pack_pairs
from safealign.models.readout import can_narrow, check_narrowing
from safealign.models.selfcheck import FallbackWarning, verified

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_checks():
    """Every test starts and ends with no cached check result (a patched class must be re-checked)."""
    selfcheck.forget()
    yield
    selfcheck.forget()


def fallbacks(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, FallbackWarning)]


def test_verified_runs_a_check_once_and_warns_once() -> None:
    calls = []

    def failing() -> None:
        calls.append(1)
        raise AssertionError("scores: off by 0.5")

    with pytest.warns(FallbackWarning, match=r"the thing failed its self-check .*transformers==.*off by 0.5.*; the public path"):
        assert verified("k", failing, "the thing", "the public path") is False
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert verified("k", failing, "the thing", "the public path") is False
    assert calls == [1] and fallbacks(record) == []
    assert verified("other", lambda: None, "x", "y") is True


def test_the_check_runs_in_fp32_with_autograd_whatever_the_caller() -> None:
    seen = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        verified("ctx", lambda: seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"))), "x", "y")
    assert seen == [(True, False)]


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_checks_pass_on_every_narrowable_family(arch: str, attention: str) -> None:
    model = AutoModel.from_config(CONFIGS[arch](), attn_implementation=attention)
    check_narrowing(model)
    check_narrowing(model, checkpointed=True)
    check_packing(model)


def test_packing_check_passes_on_gpt2() -> None:
    check_packing(AutoModel.from_config(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)))


def _attention_ignoring_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """As transformers 5.24 looked to code written for 5.23: the cache it was given never reaches attention."""
    original = modeling_llama.LlamaAttention.forward

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, *args, **kwargs):
        for name in ("cache", "past_key_values", "past_key_value"):
            kwargs.pop(name, None)
        return original(self, hidden_states, position_embeddings, attention_mask, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", forward)


def _layer_with_an_unknown_cache_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """A release that renames the cache argument once more (`kv_store`)."""
    original = modeling_llama.LlamaDecoderLayer.forward

    def forward(self, hidden_states, attention_mask=None, position_ids=None, kv_store=None, use_cache=False,
                position_embeddings=None, **kwargs):
        for name in ("cache", "past_key_values", "past_key_value"):
            kwargs.pop(name, None)
        return original(self, hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                        position_embeddings=position_embeddings, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", forward)


@pytest.mark.parametrize("change", [_attention_ignoring_the_cache, _layer_with_an_unknown_cache_argument])
def test_an_upstream_change_falls_back_to_the_full_forward_with_one_warning(change, monkeypatch) -> None:
    change(monkeypatch)
    model = score_model("llama")
    ids, mask = random_rows([9, 6, 4], left=False)
    last = torch.stack([torch.arange(3), mask.sum(-1) - 1], dim=1)
    pairs = [(ids[0, :9].tolist(), ids[0, :5].tolist() + ids[1, :3].tolist()), (ids[2, :4].tolist(), ids[1, :6].tolist())]
    packed = pack_pairs(pairs, pad_id=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scores = model(ids, mask)
        again = model(ids, mask)
        packed_scores = model(packed["input_ids"], packed["attention_mask"], position_ids=packed["position_ids"],
                              read_at=last_token_places(packed))
    messages = fallbacks(record)
    assert len(messages) == 1 and "narrowed top layer of LlamaModel (sdpa)" in messages[0], messages
    assert "compute the top layer at every position" in messages[0]
    assert not can_narrow(model.backbone)
    torch.testing.assert_close(scores, full_scores(model, ids, last, attention_mask=mask))
    torch.testing.assert_close(again, scores)
    reads = last_token_places(packed)
    reference = full_scores(model, packed["input_ids"], reads, position_ids=packed["position_ids"],
                            attention_mask=mask_for(packed["attention_mask"], model.backbone, torch.float32))
    torch.testing.assert_close(packed_scores, reference)


def test_without_the_change_the_narrowed_path_is_kept(monkeypatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        assert can_narrow(score_model("llama").backbone)


def test_a_model_that_ignores_4d_masks_is_never_packed(monkeypatch) -> None:
    original = modeling_llama.LlamaModel.forward

    @functools.wraps(original)  # the same signature: ScoreModel reads it
    def forward(self, input_ids=None, attention_mask=None, *args, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None  # a release that drops custom masks: packed pairs would see each other
        return original(self, input_ids, attention_mask, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", forward)
    with pytest.warns(FallbackWarning, match="packed pairs in LlamaModel .*; pairs are padded, not packed"):
        model = score_model("llama")
    assert not model.packable and model.packing_rule() is None
    assert not can_pack(model.backbone)


def _prepared(acc):
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    return layer, acc.prepare_optimizer(torch.optim.SGD(layer.parameters(), lr=0.1))


def test_an_optimizer_wrapper_that_does_more_is_stepped_through(monkeypatch) -> None:
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from safealign.train.loop import step_optimizer

    original = AcceleratedOptimizer.step

    def step(self, closure=None):  # a release whose wrapper does work of its own: here, halving the gradients
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad.mul_(0.5)
        return original(self, closure)

    monkeypatch.setattr(AcceleratedOptimizer, "step", step)
    acc = Accelerator(cpu=True)
    layer, optimizer = _prepared(acc)
    layer.weight.grad = torch.ones_like(layer.weight)
    layer.bias.grad = torch.ones_like(layer.bias)
    before = layer.weight.detach().clone()
    with pytest.warns(FallbackWarning, match="stepping the torch optimizer inside accelerate's wrapper"):
        step_optimizer(optimizer, acc)
    torch.testing.assert_close(layer.weight, before - 0.1 * 0.5)  # the wrapper's own step ran
    assert layer.weight.grad is None


def test_an_accelerate_clip_that_differs_from_torch_is_used(monkeypatch) -> None:
    from accelerate import Accelerator

    from safealign.train.loop import clip_gradients

    def clip(self, parameters, max_norm, norm_type=2):  # a release that clips to half the limit
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm / 2, norm_type)

    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip)
    acc = Accelerator(cpu=True)
    parameter = torch.nn.Parameter(torch.zeros(2))
    parameter.grad = torch.tensor([3.0, 4.0])
    with pytest.warns(FallbackWarning, match="clip_grad_norm_ in place of accelerate's"):
        norm = clip_gradients(acc, [parameter], 1.0)
    assert float(norm) == pytest.approx(5.0)
    torch.testing.assert_close(parameter.grad, torch.tensor([0.3, 0.4]))  # accelerate's clip, as patched


def test_without_accelerates_private_reset_a_second_precision_is_a_clear_error(monkeypatch, tmp_path) -> None:
    from accelerate.state import AcceleratorState

    from safealign.train.config import RunConfig
    from safealign.train.loop import TrainingError, make_accelerator

    AcceleratorState._reset_state()
    monkeypatch.delattr(AcceleratorState, "_reset_state")
    first = make_accelerator(RunConfig(mixed_precision="no"))
    assert first.mixed_precision == "no"
    assert make_accelerator(RunConfig(mixed_precision="no")).mixed_precision == "no"
    with pytest.raises(TrainingError, match="mixed_precision='bf16'.*run this stage in a process of its own"):
        make_accelerator(RunConfig(mixed_precision="bf16"))
