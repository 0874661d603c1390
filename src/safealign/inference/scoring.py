"""Scoring text with a reward or cost model (a `ScoreModel` folder), batched by length."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from safealign.inference.batching import pad
from safealign.models.template import encode_dialogue


@torch.no_grad()
def score_rows(model: Any, sequences: list[list[int]], pad_id: int, batch_size: int = 16,
               on_batch: Callable[[int], None] | None = None) -> list[list[float]]:
    """Every score head of every token sequence, batched by length for little padding; `on_batch(n)` after each batch."""
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    rows: list[list[float]] = [[] for _ in sequences]
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = pad([sequences[i] for i in chunk], pad_id)
        values = model.score(ids.to(device), mask.to(device)).float().tolist()  # size = (B, heads)
        for i, value in zip(chunk, values):
            rows[i] = value
        if on_batch is not None:
            on_batch(len(chunk))
    return rows


def score_texts(model: Any, sequences: list[list[int]], pad_id: int, batch_size: int = 16) -> list[float]:
    """First score of every token sequence (a reward or cost), batched by length."""
    return [row[0] for row in score_rows(model, sequences, pad_id, batch_size)]


class ModelScorer:
    """A reward or cost model folder as a scorer: re-tokenises the text with its own tokenizer."""

    def __init__(self, folder: str | Path, max_length: int = 1024, batch_size: int = 16, dtype: str = "float32") -> None:
        from safealign.models.score import ScoreModel, load_score_tokenizer

        self.model = ScoreModel.from_pretrained(folder, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = load_score_tokenizer(folder)
        # an encoder such as MiniLM reads at most max_position_embeddings tokens (512): keep the end of longer texts
        positions = getattr(getattr(self.model, "backbone", None), "config", None)
        limit = getattr(positions, "max_position_embeddings", None) if positions is not None else None
        self.max_length = min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length
        self.batch_size = batch_size

    def to(self, device: torch.device) -> ModelScorer:
        """Move the model."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, dialogues: list[list[dict[str, str]]], responses: list[str], response_ids: list[list[int]]) -> Tensor:
        sequences = [encode_dialogue(self.tokenizer, d, r, self.max_length) for d, r in zip(dialogues, responses)]
        return torch.tensor(score_texts(self.model, sequences, self.tokenizer.pad_token_id, self.batch_size))


class LengthScorer:
    """The length-only reward (Singhal et al. 2023's control): an answer's token count over `max_new_tokens`.

    `reward_model: length` in a PPO config: how much of an RLHF "gain" length alone buys.
    """

    def __init__(self, max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        self.max_new_tokens = max_new_tokens

    def to(self, device: torch.device) -> LengthScorer:
        """Nothing to move."""
        return self

    def __call__(self, dialogues: list[list[dict[str, str]]], responses: list[str], response_ids: list[list[int]]) -> Tensor:
        return torch.tensor([len(ids) / self.max_new_tokens for ids in response_ids], dtype=torch.float32)
