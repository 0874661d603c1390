"""Tiny random models built from a config (hidden size ≤ 64, 2 layers) with a real tokenizer.

The tokenizer is a byte-level BPE trained in a fraction of a second on the bundled data,
so tests tokenise real text with no download of any kind.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from conftest import DATA


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    rows = [json.loads(line) for line in (DATA / "pku_saferlhf/v1_test_sample.jsonl").read_text().splitlines()]
    return tuple(text for r in rows for text in (r["prompt"], r["response_0"], r["response_1"]))


def tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer with <pad>, <eos> and no chat template."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=vocab_size, min_frequency=2, special_tokens=["<pad>", "<eos>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>")


def tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random Llama causal LM and its tokenizer to `folder`."""
    return _save_llama(folder, tiny_tokenizer(), max_positions=512, seed=seed)


def _save_llama(folder: Path, tokenizer, max_positions: int, seed: int) -> Path:
    """A random Llama (hidden 32, 2 layers) sized to `tokenizer`, saved with it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def word_tokenizer(words: list[str]):
    """A word-level tokenizer over `words` (plus <pad>, <eos>, <unk> and the plain chat layout's words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", "USER", "ASSISTANT", ":", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def tiny_word_llama(folder: Path, words: list[str], seed: int = 0) -> Path:
    """A tiny random Llama over a word-level vocabulary (for controlled RL tasks)."""
    return _save_llama(folder, word_tokenizer(words), max_positions=64, seed=seed)


def tiny_bert(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random BERT encoder and a BPE tokenizer (a stand-in sentence encoder)."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = tiny_tokenizer()
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
