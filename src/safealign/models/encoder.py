"""A frozen sentence encoder: mean-pooled, L2-normalised embeddings (as all-MiniLM-L6-v2 is used).

The embedding moderator and the label-credibility audit read text through it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SentenceEncoder(nn.Module):
    """A frozen encoder with mean pooling and L2 normalisation (as all-MiniLM-L6-v2 is used)."""

    def __init__(self, name_or_path: str, max_length: int = 256) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from safealign.models.registry import resolve_model

        path = resolve_model(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.max_length = max_length
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, texts: list[str], batch_size: int = 64) -> Tensor:
        """Embeddings, size = (N, H)."""
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(device)
            hidden = self.model(**enc).last_hidden_state  # size = (b, L, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.dim)
