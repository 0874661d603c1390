"""Sample answers from any causal-LM policy for a prompt file, in batches (left padding, KV cache)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from safealign.data.records import Record, dialogue
from safealign.inference.sampling import SamplingSettings, encode_prompts, sample


def generate_answers(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    settings: SamplingSettings,
    batch_size: int = 8,
    max_prompt_length: int = 512,
) -> Iterator[tuple[Record, str]]:
    """(record, answer) for every record, in order; sampling is seeded by the caller."""
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        ids, mask = encode_prompts(tokenizer, [dialogue(r) for r in chunk], max_prompt_length)
        with torch.no_grad():
            rollout = sample(model, tokenizer, ids.to(device), mask.to(device), settings)
        yield from zip(chunk, rollout.responses)


def load_generator(name_or_path: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """A causal LM on `device` (`auto`: the GPU when there is one) and its tokenizer, for batched left-padded generation."""
    from safealign.models.loading import load_causal_lm, resolve_device
    from safealign.models.score import load_score_tokenizer

    place = resolve_device(device)
    tokenizer = load_score_tokenizer(name_or_path)
    model = load_causal_lm(name_or_path, dtype=dtype).to(place)
    return model, tokenizer
