"""Right-padding token lists into a batch."""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch
from torch import Tensor


def pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token lists to the longest one: (input_ids, attention_mask), size = (N, L)."""
    longest = max(len(s) for s in sequences)
    if longest == 0:
        empty = torch.zeros((len(sequences), 0), dtype=torch.long)
        return empty, empty.clone()
    # One flat int64 buffer, then one tensor: half the time of a tensor per row (it runs every step).
    flat = array("q")
    for seq in sequences:
        flat.extend(seq)
        flat.extend([pad_id] * (longest - len(seq)))
    ids = torch.frombuffer(flat, dtype=torch.long).view(len(sequences), longest).clone()  # size = (N, L)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)  # size = (N,)
    mask = (torch.arange(longest) < lengths.unsqueeze(1)).long()  # size = (N, L)
    return ids, mask
