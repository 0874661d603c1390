"""Tiny random models built from a config (hidden size 32, 2 layers) with a real tokenizer.

For trying the whole tool on a laptop CPU in seconds, and for tests and benches: the
tokenizer is a byte-level BPE trained in a fraction of a second on the bundled PKU-SafeRLHF
sample, so real text is tokenised with no download of any kind. The weights are random:
these models show that a path runs and how fast, never how well.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

CORPUS = "pku_saferlhf/v1_test_sample.jsonl"


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    from safealign.assets import sample_path

    rows = [json.loads(line) for line in sample_path(CORPUS).read_text(encoding="utf-8").splitlines()]
    return tuple(text for r in rows for text in (r["prompt"], r["response_0"], r["response_1"]))


def tiny_tokenizer(vocab_size: int = 384) -> Any:
    """A byte-level BPE tokenizer with <pad>, <eos> and no chat template, trained on the bundled sample."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=vocab_size, min_frequency=2, special_tokens=["<pad>", "<eos>"],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>")


def tiny_llama_config(tokenizer: Any, max_positions: int = 512) -> Any:
    """A 2-layer Llama config (hidden 32, 4 heads, 2 KV heads) sized to `tokenizer`, with no BOS token."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )


def save_tiny_llama(folder: str | Path, tokenizer: Any = None, max_positions: int = 512, seed: int = 0) -> Path:
    """Save a random tiny Llama causal LM and its tokenizer (`tiny_tokenizer()` unless given) to `folder`."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    torch.manual_seed(seed)
    LlamaForCausalLM(tiny_llama_config(tokenizer, max_positions)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
