"""Tests for safealign.models.score on tiny random backbones (no downloads of any kind)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported

import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from transformers import (
    AutoModel,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
)

from safealign.models.score import (
    SCORE_CONFIG_NAME,
    SCORE_HEAD_NAME,
    LoraSettings,
    ScoreModel,
    load_score_tokenizer,
)

VOCAB = 97
ARCHS = ("llama", "gpt2", "bert", "roberta")  # roberta: positions offset by its pad id


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(arch: str) -> torch.nn.Module:
    # Dropout is off everywhere so train-mode passes are deterministic and comparable.
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        )
        return LlamaForCausalLM(cfg)
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        return GPT2LMHeadModel(cfg)
    encoder = {"bert": (BertConfig, BertModel), "roberta": (RobertaConfig, RobertaModel)}
    config_cls, model_cls = encoder[arch]
    cfg = config_cls(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=72, pad_token_id=0,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return model_cls(cfg)


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny checkpoint per architecture: two causal LMs and two encoders."""
    torch.manual_seed(0)
    dirs = {}
    for arch in ARCHS:
        folder = tmp_path_factory.mktemp(arch)
        _tiny(arch).save_pretrained(folder)
        dirs[arch] = folder
    return dirs


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows: full length, right-padded, left-padded."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 7), generator=g)  # size = (B, L)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, :3] = 0
    return ids * mask, mask


def _lora_params(model: ScoreModel) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def _perturb_lora(model: ScoreModel) -> None:
    # LoRA's B starts at zero, so an untouched adapter would make every LoRA test vacuous.
    torch.manual_seed(2)
    with torch.no_grad():
        for p in _lora_params(model).values():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("score_dim", [1, 3])
def test_forward_shape(base_dirs: dict[str, Path], arch: str, score_dim: int) -> None:
    model = ScoreModel.from_base(base_dirs[arch], score_dim=score_dim).eval()
    ids, mask = _batch()
    assert model(ids, mask).shape == (3, score_dim)
    assert model(ids, mask, per_token=True).shape == (3, 7, score_dim)
    assert model.score_names == (["score"] if score_dim == 1 else ["score_0", "score_1", "score_2"])
    assert torch.isfinite(model(ids, mask)).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_score_read_at_last_real_token(base_dirs: dict[str, Path], arch: str) -> None:
    model = ScoreModel.from_base(base_dirs[arch], score_dim=2).eval()
    row = torch.tensor([[5, 17, 42, 8]])  # size = (1, 4)
    other = torch.randint(1, VOCAB, (1, 7))  # a full-length neighbour forces 3 pads on `row`
    pad = torch.zeros(1, 3, dtype=torch.long)
    right_ids = torch.cat([torch.cat([row, pad], 1), other])  # size = (2, 7)
    left_ids = torch.cat([torch.cat([pad, row], 1), other])  # size = (2, 7)
    with torch.no_grad():
        alone = model(row, torch.ones_like(row))
        right = model(right_ids, (right_ids != 0).long())
        left = model(left_ids, (left_ids != 0).long())
        tokens = model(row, torch.ones_like(row), per_token=True)
    assert_close(right[:1], alone)
    assert_close(left[:1], alone)
    assert_close(tokens[:, -1], alone)
    # Right padding must agree with the backbone's own position numbering (RoBERTa offsets it).
    with torch.no_grad():
        native = model.backbone(input_ids=right_ids, attention_mask=(right_ids != 0).long())
    assert_close(right[:1], model.head(native.last_hidden_state[:1, 3]))


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_round_trip_with_normalizer(base_dirs: dict[str, Path], arch: str, tmp_path: Path) -> None:
    names = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    model = ScoreModel.from_base(base_dirs[arch], score_dim=5, score_names=names, kind="attributes").eval()
    model.update_normalizer(torch.randn(16, 5) * 3 + 1)
    model.normalized = True
    ids, mask = _batch()
    with torch.no_grad():
        raw, normed = model(ids, mask), model.score(ids, mask)
    model.save_pretrained(tmp_path / "rm")

    loaded = ScoreModel.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        assert_close(loaded(ids, mask), raw, rtol=0, atol=0)
        assert_close(loaded.score(ids, mask), normed, rtol=0, atol=0)
    assert (loaded.kind, loaded.score_names, loaded.normalized) == ("attributes", names, True)
    for key in ("norm_count", "norm_mean", "norm_var"):
        assert torch.equal(getattr(loaded, key), getattr(model, key))
    meta = json.loads((tmp_path / "rm" / SCORE_CONFIG_NAME).read_text())
    assert meta["score_dim"] == 5 and meta["base_model"] == str(base_dirs[arch])
    assert ScoreModel.from_pretrained(tmp_path / "rm", kind="critic").kind == "critic"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: Conv1D weights are stored transposed
def test_round_trip_lora_merges_adapters(base_dirs: dict[str, Path], arch: str, tmp_path: Path) -> None:
    model = ScoreModel.from_base(base_dirs[arch], kind="cost", lora=LoraSettings(r=4)).eval()
    _perturb_lora(model)
    ids, mask = _batch()
    with torch.no_grad():
        before = model(ids, mask)
        plain = ScoreModel.from_base(base_dirs[arch]).eval()
        plain.head.load_state_dict(model.head.state_dict())
        assert not torch.allclose(plain(ids, mask), before, atol=1e-4)  # the adapter matters
    model.save_pretrained(tmp_path / "cm")

    folder = tmp_path / "cm"
    expected = {"config.json", "model.safetensors", SCORE_HEAD_NAME, SCORE_CONFIG_NAME}
    assert expected <= {p.name for p in folder.iterdir()}
    assert not (folder / "adapter_config.json").exists()
    loaded = ScoreModel.from_pretrained(folder).eval()
    assert not hasattr(loaded.backbone, "peft_config")
    assert not any("lora_" in k for k in AutoModel.from_pretrained(folder).state_dict())
    with torch.no_grad():
        assert_close(loaded(ids, mask), before)
    assert loaded.kind == "cost"


def test_normalizer_matches_hand_computed_values(base_dirs: dict[str, Path]) -> None:
    model = ScoreModel.from_base(base_dirs["gpt2"])
    x = torch.tensor([[0.5], [-1.0]])
    assert_close(model.normalize(x), x)  # identity before any statistics
    model.update_normalizer(torch.tensor([1.0, 2.0]))
    model.update_normalizer(torch.tensor([[3.0], [4.0]]))
    assert int(model.norm_count) == 4
    assert_close(model.norm_mean, torch.tensor([2.5], dtype=torch.float64))
    assert_close(model.norm_var, torch.tensor([1.25], dtype=torch.float64))
    assert_close(model.normalize(x), (x - 2.5) / 1.25**0.5)

    # Per-dimension statistics, and any split of the data gives the same result.
    data = torch.randn(10, 3, dtype=torch.float64)
    multi = ScoreModel.from_base(base_dirs["gpt2"], score_dim=3)
    for chunk in (data[:1], data[1:7], data[7:]):
        multi.update_normalizer(chunk)
    assert_close(multi.norm_mean, data.mean(0))
    assert_close(multi.norm_var, data.var(0, unbiased=False))


def test_lora_trains_only_adapters_and_head(base_dirs: dict[str, Path]) -> None:
    lora = LoraSettings(r=4, target_modules=["q_proj", "v_proj"])
    model = ScoreModel.from_base(base_dirs["llama"], lora=lora)
    _perturb_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(_lora_params(model)) | {"head.weight", "head.bias"}
    assert len(_lora_params(model)) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)

    ids, mask = _batch()
    model.train()
    model(ids, mask).square().sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4)])
def test_gradient_checkpointing_backward(base_dirs: dict[str, Path], lora: LoraSettings | None) -> None:
    ids, mask = _batch()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same head and LoRA A initialisation in both runs
        model = ScoreModel.from_base(base_dirs["llama"], lora=lora, gradient_checkpointing=checkpointing)
        if lora is not None:
            _perturb_lora(model)
        model.train()
        model(ids, mask).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert model.backbone.is_activation_checkpointing  # transformers 5 name
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert grads[1][name] is not None and grads[1][name].abs().sum() > 0, name
        assert_close(grads[1][name], grads[0][name], msg=name)


def test_load_score_tokenizer_sets_pad_and_side(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"[UNK]": 0, "</s>": 1, "hello": 2, "world": 3}
    raw = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = Whitespace()
    with_eos = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", padding_side="left")
    with_eos.save_pretrained(tmp_path / "with_eos")
    PreTrainedTokenizerFast(tokenizer_object=raw).save_pretrained(tmp_path / "bare")

    tok = load_score_tokenizer(tmp_path / "with_eos")
    assert (tok.pad_token, tok.padding_side) == ("</s>", "right")
    batch = tok(["hello", "hello world"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == [2, 1] and batch["attention_mask"][0].tolist() == [1, 0]

    bare = load_score_tokenizer(tmp_path / "bare")
    assert bare.pad_token == "<pad>" and len(bare) == len(vocab) + 1


def test_bad_score_names(base_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="score_names"):
        ScoreModel.from_base(base_dirs["gpt2"], score_dim=2, score_names=["only_one"])


def test_a_scorer_on_an_encoder_keeps_within_its_positions(tmp_path):
    from tiny import tiny_bert

    from safealign.inference.scoring import ModelScorer

    folder = tiny_bert(tmp_path / "bert")
    ScoreModel.from_base(folder, kind="reward").save_pretrained(tmp_path / "rm", load_score_tokenizer(folder))
    scorer = ModelScorer(tmp_path / "rm", max_length=1024)
    assert scorer.max_length == 512  # BERT's max_position_embeddings, not the 1024 asked for
    long = " ".join(["word"] * 900)  # past 512 tokens: the end is kept, nothing indexes past the position table
    scores = scorer([[{"role": "user", "content": long}]], [long], [[]])
    assert scores.shape == (1,) and torch.isfinite(scores).all()
