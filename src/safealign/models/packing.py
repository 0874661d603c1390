"""Pair packing: the two responses of a pair in one row, their shared prefix computed once.

A preference pair is two token sequences that usually start with the same tokens (the
rendered dialogue). In a causal model a token's hidden state depends only on the tokens at or
before it, so the shared prefix can be run once and both continuations attend to it:

    row    = [ prefix (p) | rest of a (len(a) - p) | rest of b (len(b) - p) | padding ]
    place  = [ 0 .. p-1   | p .. len(a)-1          | p .. len(b)-1          | 0 ...   ]

with a block mask in which `b`'s rest sees the prefix and itself (causally) but not `a`'s
rest. Every hidden state equals the one the unpacked, padded forward gives; the pair costs
len(a) + len(b) - p positions instead of 2 × the longest sequence in the batch.

Only for causal models (a bidirectional encoder's prefix tokens see the responses, so their
states differ per response): `can_pack` says whether a backbone qualifies. Packing trades
dense-layer work (fewer positions) for attention work (longer rows); `PackingRule` decides per
batch from the model's shape which layout costs fewer FLOPs.

That a model honours a custom 4D mask and per-token `position_ids` is how transformers'
sdpa and eager attention work today, not a documented promise: `can_pack` checks it once per
model class and library versions on a tiny random twin (`check_packing`), and a model that
fails is never packed (one `FallbackWarning`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from safealign.models.selfcheck import assert_close, first_output, tiny_twin, verified

PACKABLE_ATTENTION = ("sdpa", "eager")


def is_causal(backbone: nn.Module) -> bool:
    """True when every attention module of a transformers model is causal (decoder-only)."""
    flags = [m.is_causal for m in backbone.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    return bool(flags) and all(flags)


def can_pack(backbone: nn.Module) -> bool:
    """True for a causal transformers model whose attention takes a custom 4D mask (self-checked)."""
    config = getattr(backbone, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in PACKABLE_ATTENTION or not is_causal(backbone):
        return False
    if "position_ids" not in inspect.signature(backbone.forward).parameters:
        return False
    return verified(("pack_pairs", type(backbone), implementation), lambda: check_packing(backbone),
                    what=f"packed pairs in {type(backbone).__name__} ({implementation})",
                    fallback="pairs are padded, not packed")


def check_packing(model: nn.Module) -> None:
    """Raise unless packed pairs give a tiny twin of `model` the outputs of the padded forward.

    Every token of both sequences of each pair; for a causal LM also with `logits_to_keep`
    as a tensor of columns, as `sequence_logprobs` calls it.
    """
    twin = tiny_twin(model)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, twin.config.vocab_size, (4, 6), generator=generator).tolist()
    pairs = [(ids[0], ids[0][:3] + ids[1][:2]), (ids[2][:4], ids[3])]
    sequences = [a for a, _ in pairs] + [b for _, b in pairs]
    longest = max(len(s) for s in sequences)
    padded = torch.tensor([s + [0] * (longest - len(s)) for s in sequences])  # size = (2B, L)
    mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sequences])
    packed = pack_pairs(pairs, pad_id=0)
    inputs = {"input_ids": packed["input_ids"], "position_ids": packed["position_ids"],
              "attention_mask": mask_for(packed["attention_mask"], twin, torch.float32)}
    variants = {"packed": {}}
    if "logits_to_keep" in inspect.signature(twin.forward).parameters:
        variants["packed, logits_to_keep"] = {"logits_to_keep": torch.arange(packed["input_ids"].size(1))}
    with torch.no_grad():
        want = first_output(twin(input_ids=padded, attention_mask=mask))  # size = (2B, L, D)
        for name, extra in variants.items():
            got = first_output(twin(**inputs, **extra))  # size = (B, W, D)
            for s, sequence in enumerate(sequences):
                columns = packed["index"][s, : len(sequence)]
                assert_close(f"{name}: sequence {s}", got[packed["rows"][s], columns], want[s, : len(sequence)])


@dataclass(frozen=True)
class PackingRule:
    """FLOPs per position and per (query, key) of a model; packs a batch only where that pays.

    Padded: 2B right-padded rows of the longest sequence L, which need no mask in a causal
    model, so attention covers the lower triangle only; packed: B rows of the longest packed
    pair W, whose block mask makes attention cover the whole square.
    """

    per_position: float
    """Dense layers (and the output head where logits are computed), every layer, per position."""
    per_key: float
    """Attention scores and the weighted sum, every layer, per (query, key)."""
    margin: float = 0.95
    """Pack only when its cost is below this share of the padded cost."""

    @classmethod
    def for_config(cls, config: Any, output_size: int = 0) -> PackingRule:
        """From a transformers config; `output_size` = the vocabulary when logits are computed."""
        hidden = getattr(config, "hidden_size", None) or config.n_embd
        inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        layers = getattr(config, "num_hidden_layers", None) or config.n_layer
        dense = 2 * (4 * hidden * hidden + 3 * hidden * inner)
        return cls(per_position=layers * dense + 2 * hidden * output_size, per_key=layers * 4 * hidden)

    def pays(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> bool:
        """Whether packing these pairs costs fewer FLOPs than padding their 2B sequences."""
        width = max(packed_length(a, b) for a, b in pairs)
        longest = max(max(len(a), len(b)) for a, b in pairs)
        packed = len(pairs) * (width * self.per_position + width * width * self.per_key)
        padded = 2 * len(pairs) * (longest * self.per_position + longest * longest / 2 * self.per_key)
        return packed < self.margin * padded


def should_pack(packing: PackingRule | bool | None, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> bool:
    """Whether a collate packs these pairs: `True` always, a rule when it pays, `None`/`False` never."""
    if isinstance(packing, PackingRule):
        return bool(pairs) and packing.pays(pairs)
    return bool(packing) and bool(pairs)


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix, leaving each sequence at least its last token of its own."""
    limit = min(len(a), len(b)) - 1
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def packed_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Positions the pair takes in a packed row."""
    return len(a) + len(b) - shared_prefix(a, b)


def pack_pairs(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, Any]:
    """One row per pair; `index` maps every token of every sequence to its place in the rows.

    Returns:
        input_ids, position_ids: size = (B, W), W the longest packed pair;
        attention_mask: bool, True = may attend, size = (B, 1, W, W); a padding position
            attends to itself only, so no softmax row is empty;
        rows: the row of each sequence, order [a_0..a_B, b_0..b_B], size = (2B,);
        index: column of each token of each sequence (0 past its end), size = (2B, Lmax);
        lengths: tokens per sequence, size = (2B,).
    """
    prefixes = [shared_prefix(a, b) for a, b in pairs]
    width = max(len(a) + len(b) - p for (a, b), p in zip(pairs, prefixes))
    longest = max(max(len(a), len(b)) for a, b in pairs)
    n_pairs = len(pairs)
    input_ids = torch.full((n_pairs, width), pad_id, dtype=torch.long)  # size = (B, W)
    position_ids = torch.zeros((n_pairs, width), dtype=torch.long)  # size = (B, W)
    allowed = torch.eye(width, dtype=torch.bool).repeat(n_pairs, 1, 1)  # size = (B, W, W)
    index = torch.zeros((2 * n_pairs, longest), dtype=torch.long)  # size = (2B, Lmax)
    causal = torch.ones((width, width), dtype=torch.bool).tril()  # size = (W, W)
    for row, ((a, b), p) in enumerate(zip(pairs, prefixes)):
        end_a, end = len(a), len(a) + len(b) - p
        input_ids[row, :end_a] = torch.tensor(a, dtype=torch.long)
        input_ids[row, end_a:end] = torch.tensor(b[p:], dtype=torch.long)
        position_ids[row, :end_a] = torch.arange(end_a)
        position_ids[row, end_a:end] = torch.arange(p, len(b))
        allowed[row, :end, :end] = causal[:end, :end]
        allowed[row, end_a:end, p:end_a] = False  # b's rest does not see a's rest
        index[row, : len(a)] = torch.arange(len(a))
        index[n_pairs + row, :p] = torch.arange(p)
        index[n_pairs + row, p : len(b)] = torch.arange(end_a, end)
    lengths = torch.tensor([len(a) for a, _ in pairs] + [len(b) for _, b in pairs], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": allowed.unsqueeze(1),
        "rows": torch.arange(2 * n_pairs) % n_pairs,
        "index": index,
        "lengths": lengths,
    }


def last_token_places(packed: dict[str, Tensor]) -> Tensor:
    """(row, column) of each sequence's last token in the packed rows, size = (2B, 2)."""
    last = packed["index"].gather(1, (packed["lengths"] - 1).unsqueeze(1)).squeeze(1)  # size = (2B,)
    return torch.stack([packed["rows"], last], dim=1)


def right_padded(attention_mask: Tensor) -> bool:
    """Whether every row of a 2D mask is ones then zeros (padding only at the end)."""
    return bool((attention_mask[:, :-1] >= attention_mask[:, 1:]).all())


def mask_for(attention_mask: Tensor, backbone: nn.Module, dtype: torch.dtype) -> Tensor:
    """The 4D bool mask in the form the backbone's attention adds: bool for sdpa, additive for eager."""
    if backbone.config._attn_implementation != "eager":
        return attention_mask
    return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        ~attention_mask, torch.finfo(dtype).min
    )
