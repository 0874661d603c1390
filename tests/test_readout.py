"""The top layer at the read positions only (safealign.models.readout): exact against the full forward."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported

import pytest
import torch
from torch.testing import assert_close
from transformers import (
    AutoModel,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from safealign.models.packing import last_token_places, mask_for, pack_pairs
from safealign.models.readout import can_narrow, group_places, top_layer
from safealign.models.score import LoraSettings, ScoreModel

VOCAB = 64
SHAPE = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
CONFIGS = {
    "llama": lambda: LlamaConfig(**SHAPE),
    "mistral": lambda: MistralConfig(**SHAPE, sliding_window=None),
    "qwen2": lambda: Qwen2Config(**SHAPE),
    "qwen3": lambda: Qwen3Config(**SHAPE, head_dim=8),  # q_norm / k_norm on the head dimension
}

pytestmark = pytest.mark.usefixtures("one_thread")


def score_model(arch: str, attention: str = "sdpa", seed: int = 0) -> ScoreModel:
    torch.manual_seed(seed)
    model = ScoreModel(AutoModel.from_config(CONFIGS[arch](), attn_implementation=attention))
    torch.nn.init.normal_(model.head.weight)
    return model


class TopLayerWidth:
    """Records how many positions the last layer's MLP saw, so a test knows narrowing ran."""

    def __init__(self, model: ScoreModel) -> None:
        layer = model.backbone.get_base_model().layers[-1] if hasattr(model.backbone, "get_base_model") else model.backbone.layers[-1]
        self.widths: list[int] = []
        self.handle = layer.mlp.register_forward_hook(lambda _m, args, _out: self.widths.append(args[0].shape[1]))


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_same_grads(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Equal up to float32 rounding, relative to each gradient's largest entry (some reach 10^2)."""
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert_close(got[name], grad, rtol=1e-5, atol=1e-6 * float(grad.abs().max()), msg=name)


def full_scores(model: ScoreModel, input_ids, places, **kwargs) -> torch.Tensor:
    """The reference: every position of every layer, then the head at (row, column) `places`."""
    hidden = model.backbone(input_ids=input_ids, use_cache=False, **kwargs).last_hidden_state
    return model.head(hidden[places[:, 0], places[:, 1]])


def random_rows(lengths: list[int], left: bool, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        cols = slice(width - n, width) if left else slice(0, n)
        ids[row, cols] = torch.randint(1, VOCAB, (n,), generator=generator)
        mask[row, cols] = 1
    return ids, mask


def test_group_places_by_hand() -> None:
    table, slot = group_places(torch.tensor([[0, 5], [1, 3], [0, 9], [1, 7]]), rows=2)
    assert table.tolist() == [[5, 9], [3, 7]]
    assert slot.tolist() == [0, 2, 1, 3]  # table.reshape(-1)[slot] = [5, 3, 9, 7], the columns in order
    table, slot = group_places(torch.tensor([[0, 5], [0, 6], [1, 2]]), rows=2)
    assert table.tolist() == [[5, 6], [2, 2]]  # the short row repeats its last column
    assert slot.tolist() == [0, 1, 2]


def test_only_known_decoder_layers_narrow() -> None:
    for arch in CONFIGS:
        assert can_narrow(score_model(arch).backbone), arch
    gpt2 = AutoModel.from_config(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    bert = AutoModel.from_config(BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64))
    assert top_layer(gpt2) is None and top_layer(bert) is None
    flex = AutoModel.from_config(LlamaConfig(**SHAPE), attn_implementation="flex_attention")
    assert not can_narrow(flex)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_scores_and_gradients_equal_the_full_forward(arch: str, attention: str, left: bool) -> None:
    model = score_model(arch, attention)
    ids, mask = random_rows([9, 14, 5, 14], left=left)
    last = torch.tensor([[r, (mask[r] * torch.arange(mask.size(1))).argmax().item()] for r in range(4)])
    width = TopLayerWidth(model)
    narrowed = model(ids, mask)
    assert width.widths == [1], "the top layer ran at every position"
    narrowed.sum().backward()
    narrowed_grads = grads(model)
    reference = full_scores(model, ids, last, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
    reference.sum().backward()
    assert_close(narrowed, reference)
    assert_same_grads(narrowed_grads, grads(model))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pairs_read_two_places_per_row(arch: str, attention: str) -> None:
    model = score_model(arch, attention)
    generator = torch.Generator().manual_seed(3)
    draw = lambda n: torch.randint(1, VOCAB, (n,), generator=generator).tolist()  # noqa: E731
    prompt = draw(6)
    pairs = [(prompt + draw(5), prompt + draw(8)), (draw(4), draw(3)), (prompt[:3] + draw(2), prompt[:3] + draw(7))]
    rows = pack_pairs(pairs, pad_id=0)
    read_at = last_token_places(rows)
    width = TopLayerWidth(model)
    narrowed = model(rows["input_ids"], rows["attention_mask"], position_ids=rows["position_ids"], read_at=read_at)
    assert width.widths == [2]
    narrowed.sum().backward()
    narrowed_grads = grads(model)
    mask = mask_for(rows["attention_mask"], model.backbone, torch.float32)
    reference = full_scores(model, rows["input_ids"], read_at, attention_mask=mask, position_ids=rows["position_ids"])
    reference.sum().backward()
    assert_close(narrowed, reference)
    assert_same_grads(narrowed_grads, grads(model))


@pytest.mark.parametrize("setting", ["lora", "gradient-checkpointing"])
def test_lora_and_checkpointing_keep_the_narrowed_top_layer_exact(setting: str) -> None:
    model = score_model("llama")
    if setting == "lora":
        model._prepare(LoraSettings(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]), False)
        for name, param in model.backbone.named_parameters():  # LoRA's B starts at 0; give it gradients to compare
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
    else:
        model._prepare(None, gradient_checkpointing=True)
    model.train()
    assert can_narrow(model.backbone)
    ids, mask = random_rows([12, 7, 12], left=False)
    width = TopLayerWidth(model)
    narrowed = model(ids, mask)
    assert width.widths == [1]
    narrowed.sum().backward()
    narrowed_grads = grads(model)
    assert narrowed_grads, "no trainable parameter got a gradient"
    if setting == "lora":
        assert any("lora_A" in name for name in narrowed_grads)
    last = torch.tensor([[0, 11], [1, 6], [2, 11]])
    reference = full_scores(model, ids, last, attention_mask=mask)
    reference.sum().backward()
    assert_close(narrowed, reference)
    assert_same_grads(narrowed_grads, grads(model))


def test_per_token_scores_and_inference_are_unchanged() -> None:
    model = score_model("llama").eval()
    ids, mask = random_rows([6, 10], left=False)
    per_token = model(ids, mask, per_token=True)
    assert per_token.shape == (2, 10, 1)
    assert_close(model.score(ids, mask), per_token[[0, 1], [5, 9]])
