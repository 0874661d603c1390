"""Batch order: seeded, length-grouped, identical for any number of processes."""

from __future__ import annotations

import random

import torch

from safealign.inference.batching import pad
from safealign.train.batching import epoch_batches, micro_batches, shard


def test_epoch_batches_are_seeded_complete_and_grouped():
    rng = random.Random(0)
    lengths = [rng.randint(1, 500) for _ in range(1000)]
    batches = epoch_batches(lengths, 16, seed=1, epoch=0, group_by_length=True)
    assert batches == epoch_batches(lengths, 16, seed=1, epoch=0, group_by_length=True)
    assert batches != epoch_batches(lengths, 16, seed=1, epoch=1, group_by_length=True)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == 1000 - 1000 % 16  # every example once; the partial batch dropped
    padding = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)  # noqa: E731
    plain = epoch_batches(lengths, 16, seed=1, epoch=0, group_by_length=False)
    assert padding(batches) < padding(plain) / 5


def test_shards_and_micro_batches_cover_the_global_batch():
    batch = list(range(8))
    assert sorted(shard(batch, 0, 2) + shard(batch, 1, 2)) == batch
    assert micro_batches(shard(batch, 1, 2), 2) == [[1, 3], [5, 7]]


def test_pad_right():
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    ids, mask = pad([[], []], pad_id=9)
    assert ids.shape == mask.shape == (2, 0)
