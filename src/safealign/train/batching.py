"""Batches: a seeded, length-grouped order of global batches, sharded over processes.

Padding a batch of token lists (`pad`) is shared by every consumer: `safealign.inference.batching`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence



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
