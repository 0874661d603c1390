"""Batches: a seeded, length-grouped order of global batches, sharded over processes."""

from __future__ import annotations

import random
from array import array
from collections.abc import Sequence

import torch
from torch import Tensor


def epoch_batches(lengths: Sequence[int], global_batch: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """The global batches of one epoch (lists of example indices); the last partial one is dropped.

    Length grouping sorts each window of 50 global batches by length, then shuffles the
    batch order, so batches have little padding while the epoch order stays random. The
    result depends only on (lengths, global_batch, seed, epoch): a resumed run and a run on
    another number of processes see the same batches.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = global_batch * 50
        order = [i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lambda i: -lengths[i])]
    batches = [order[s : s + global_batch] for s in range(0, len(order) - global_batch + 1, global_batch)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global batch (strided, so lengths stay balanced)."""
    return batch[rank::world]


def micro_batches(indices: list[int], per_device: int) -> list[list[int]]:
    """Split one process's share into micro-batches of `per_device` examples."""
    return [indices[s : s + per_device] for s in range(0, len(indices), per_device)]


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
