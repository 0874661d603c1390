"""Tiny random models built from a config (hidden size ≤ 64, 2 layers) with a real tokenizer.

The Llama and its tokenizer are the package's own (`safealign.models.tiny`, shared with the
benches); the word-level tokenizer and the BERT encoder are for tests only.
"""

from __future__ import annotations

from pathlib import Path

from safealign.models.tiny import save_tiny_llama, tiny_tokenizer

__all__ = ["tiny_bert", "tiny_llama", "tiny_tokenizer", "tiny_word_llama", "word_tokenizer"]


def tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random Llama causal LM and its tokenizer to `folder`."""
    return save_tiny_llama(folder, max_positions=512, seed=seed)


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
    return save_tiny_llama(folder, word_tokenizer(words), max_positions=64, seed=seed)


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
