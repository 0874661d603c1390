"""The top decoder layer computed only at the tokens a score model reads.

A score model reads the backbone's last hidden state at one token per sequence (two per
packed pair). In a causal decoder, every other position of the *last* layer is computed and
thrown away: the read token needs the keys and values of the tokens before it, nothing else.
`narrow_top_layer` runs that layer as

    keys, values  <- the layer's own norm and projections (rotary and all) at every position
    query, attention, output projection, MLP, final norm  <- at the read positions only

so the scores, and their gradients, are the ones the full forward gives, for the work of
``(L - R) / L`` of one layer less (L positions per row, R read). On a deep model that is
``1 / num_layers`` of the forward and backward; on a shallow one, much more.

It works through the model's own modules: a forward pre-hook on the last layer computes the
keys and values from the layer's own norm and projections, then hands the layer only the
read positions, their rotary angles and mask rows, and a read-only cache that returns the
full keys and values. Only decoder layers whose forward is ``input_layernorm -> self_attn
(keys through k_proj, an optional k_norm and the rotary embedding; a cache update) -> MLP``
qualify (`NARROWABLE`); any other backbone runs in full.

This reaches into transformers' layers (their argument names, how attention consults the
cache), which change between releases. So before a layer class is narrowed for the first
time in a process, `can_narrow` checks the narrowed forward against the full one on a tiny
random twin of the model (scores and every gradient; right padding, left padding and packed
pairs), and falls back to the full forward, with one `FallbackWarning`, when it differs.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from safealign.models.loading import enable_gradient_checkpointing
from safealign.models.packing import PACKABLE_ATTENTION, last_token_places, mask_for, pack_pairs
from safealign.models.selfcheck import assert_close, tiny_twin, verified

NARROWABLE = frozenset({"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"})
"""Decoder layers whose top layer may run at the read positions only."""


def top_layer(backbone: nn.Module) -> nn.Module | None:
    """The last decoder layer of a transformers backbone (LoRA-wrapped or not) if it qualifies."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    layers = getattr(base, "layers", None)
    config = getattr(base, "config", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0 or config is None:
        return None
    if getattr(config, "_attn_implementation", None) not in PACKABLE_ATTENTION:
        return None
    if len(layers) != getattr(config, "num_hidden_layers", len(layers)):
        return None  # the model runs a slice of its layers; keep to its own forward
    layer = layers[-1]
    return layer if type(layer).__name__ in NARROWABLE else None


class _Replay:
    """A read-only cache: the attention at the read positions sees every position's keys and values."""

    def __init__(self, key: Tensor, value: Tensor) -> None:
        self.key, self.value = key, value
        self.used = False

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        self.used = True
        return self.key, self.value


def group_places(read_at: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """(row, column) pairs as a (rows, R) table of columns, and each pair's flat slot in it.

    Rows with fewer than R reads repeat their last column (computed twice, read once).
    ``table.reshape(-1)[slot[i]]`` is the column of pair i, size = (N,).
    """
    per_row: list[list[int]] = [[] for _ in range(rows)]
    ranks = []  # (row, rank within the row) of each pair
    for row, column in read_at.tolist():
        ranks.append((row, len(per_row[row])))
        per_row[row].append(column)
    width = max(len(columns) for columns in per_row)
    if width == 0:
        raise ValueError("read_at is empty")
    slot = [row * width + rank for row, rank in ranks]
    table = [columns + [columns[-1] if columns else 0] * (width - len(columns)) for columns in per_row]
    return torch.tensor(table, dtype=torch.long), torch.tensor(slot, dtype=torch.long)


def _rows(tensor: Tensor, places: Tensor, dim: int) -> Tensor:
    """`tensor` (batch first, positions at `dim`) at the read places, size = (B, ..., R, ...)."""
    batch = places.size(0)
    tensor = tensor.expand(batch, *tensor.shape[1:])
    index = places.reshape(batch, *([1] * (dim - 1)), places.size(1), *([1] * (tensor.dim() - dim - 1)))
    return tensor.gather(dim, index.expand(*tensor.shape[:dim], places.size(1), *tensor.shape[dim + 1 :]))


def _keys_values(layer: nn.Module, hidden: Tensor, position_embeddings: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The layer's attention keys (rotary applied) and values at every position, size = (B, Hkv, L, Dh).

    As the `NARROWABLE` layers compute them: ``k_norm(k_proj(input_layernorm(h)))`` per head
    (``k_norm`` only where the layer has one, as Qwen3 does), then the rotary embedding.
    """
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    shape = (*hidden.shape[:-1], -1, attention.head_dim)  # (B, L, Hkv, Dh)
    key = attention.k_proj(normed).view(shape)
    if getattr(attention, "k_norm", None) is not None:
        key = attention.k_norm(key)
    key = key.transpose(1, 2)
    value = attention.v_proj(normed).view(shape).transpose(1, 2)
    cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # size = (B or 1, 1, L, Dh)
    half = key.size(-1) // 2
    rotated = torch.cat((-key[..., half:], key[..., :half]), dim=-1)
    return key * cos + rotated * sin, value


_CACHE_NAMES = ("cache", "past_key_values", "past_key_value")  # transformers >= 5.24, 5.0-5.23, 4.x


@functools.cache
def _cache_argument(forward: Any) -> str:
    """What a layer's `forward` calls its cache argument (renamed twice so far)."""
    parameters = inspect.signature(forward).parameters
    for name in _CACHE_NAMES:
        if name in parameters:
            return name
    raise RuntimeError(f"{forward.__qualname__} takes none of {_CACHE_NAMES}")


def _narrow(places: Tensor, backbone: nn.Module, layer: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple:
    """Forward pre-hook: swap the layer's inputs for their read positions and a replaying cache."""
    kwargs = dict(kwargs)
    hidden = args[0] if args else kwargs.pop("hidden_states")  # size = (B, L, H)
    position_embeddings = kwargs.get("position_embeddings")
    if position_embeddings is None:
        raise RuntimeError(f"{type(layer).__name__} got no position_embeddings; cannot narrow it")
    key, value = _keys_values(layer, hidden, position_embeddings)
    mask = kwargs.get("attention_mask")
    if mask is None:  # causal attention without a mask: a read token sees every key at or before it
        keys = torch.arange(hidden.size(1), device=hidden.device)
        allowed = (keys.view(1, 1, -1) <= places.unsqueeze(-1)).unsqueeze(1)  # size = (B, 1, R, L)
        kwargs["attention_mask"] = mask_for(allowed, backbone, hidden.dtype)
    elif isinstance(mask, Tensor) and mask.dim() == 4:
        kwargs["attention_mask"] = _rows(mask, places, 2)  # size = (B, 1, R, L)
    else:
        raise RuntimeError(f"cannot narrow a layer whose attention mask is {type(mask).__name__}")
    kwargs["position_embeddings"] = tuple(_rows(t, places, 1) for t in position_embeddings)
    for name in ("position_ids", "cache_position"):
        value_at = kwargs.get(name)
        if isinstance(value_at, Tensor) and value_at.dim() == 2:
            kwargs[name] = _rows(value_at, places, 1)
        elif isinstance(value_at, Tensor):
            kwargs.pop(name)
    for name in _CACHE_NAMES:
        kwargs.pop(name, None)
    kwargs["use_cache"] = False
    replay = _Replay(key, value)
    kwargs[_cache_argument(type(layer).forward)] = replay
    layer._safealign_replay = replay  # checked after the layer ran (`_check_replayed`)
    return (_rows(hidden, places, 1),), kwargs  # size = (B, R, H)


def _check_replayed(layer: nn.Module, args: tuple, output: Any) -> None:
    """Forward hook: the attention must have taken its keys and values from the replaying cache."""
    replay = vars(layer).pop("_safealign_replay", None)
    if replay is not None and not replay.used:
        raise RuntimeError(f"{type(layer).__name__}'s attention did not consult the cache it was given")


def can_narrow(backbone: nn.Module) -> bool:
    """Whether `narrow_top_layer` applies to this backbone (in training or not), self-checked."""
    layer = top_layer(backbone)
    if layer is None:
        return False
    # Under gradient checkpointing transformers drops a layer's cache unless the layer says
    # it only reads it, which transformers 5 lets a layer say; ours only reads.
    checkpointed = bool(getattr(layer, "gradient_checkpointing", False))
    if checkpointed and not hasattr(type(layer), "_can_checkpoint_with_cache"):
        return False
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    key = ("narrow_top_layer", type(base), type(layer), base.config._attn_implementation, checkpointed)
    return verified(key, lambda: check_narrowing(base, checkpointed),
                    what=f"the narrowed top layer of {type(base).__name__} ({base.config._attn_implementation})",
                    fallback="score models compute the top layer at every position")


def check_narrowing(model: nn.Module, checkpointed: bool = False) -> None:
    """Raise unless the narrowed forward of a tiny twin of `model` equals its full forward.

    Scores and the gradients of every parameter, for the three ways `ScoreModel` calls a
    backbone: right padding without a mask, a 2D mask with left padding, packed pairs.
    """
    twin = tiny_twin(model)
    if checkpointed:  # checkpointing acts in training mode only
        enable_gradient_checkpointing(twin)
        twin.train()
    if top_layer(twin) is None:
        raise RuntimeError(f"a tiny {type(model).__name__} has no narrowable top layer")
    extra = {"use_cache": False} if "use_cache" in inspect.signature(twin.forward).parameters else {}
    generator = torch.Generator().manual_seed(0)
    vocab = twin.config.vocab_size
    ids = torch.randint(1, vocab, (3, 7), generator=generator)  # size = (3, 7)
    lengths = torch.tensor([7, 5, 3])
    right = (torch.arange(7) < lengths.unsqueeze(1)).long()  # size = (3, 7)
    left = right.flip(1)
    sequences = [ids[i, : int(n)].tolist() for i, n in enumerate(lengths)]
    pairs = [(sequences[0], sequences[0][:4] + sequences[1][:2]), (sequences[2], sequences[1])]
    packed = pack_pairs(pairs, pad_id=0)
    mask = mask_for(packed["attention_mask"], twin, torch.float32)
    read_right = torch.stack([torch.arange(3), lengths - 1], dim=1)  # (row, column), size = (N, 2)
    read_left = torch.stack([torch.arange(3), torch.full((3,), 6)], dim=1)
    cases = {
        "right padding": ({"input_ids": ids}, read_right),
        "left padding": ({"input_ids": ids.flip(1), "attention_mask": left,
                          "position_ids": (left.cumsum(-1) - 1).clamp_min(0)}, read_left),
        "packed pairs": ({"input_ids": packed["input_ids"], "attention_mask": mask,
                          "position_ids": packed["position_ids"]}, last_token_places(packed)),
    }
    named = [(n, p) for n, p in twin.named_parameters() if p.requires_grad]
    parameters = [p for _, p in named]
    for name, (inputs, read_at) in cases.items():
        weights = torch.randn(read_at.size(0), twin.config.hidden_size, generator=generator)
        hidden = twin(**inputs, **extra).last_hidden_state[read_at[:, 0], read_at[:, 1]]  # size = (N, H)
        want = torch.autograd.grad((hidden * weights).sum(), parameters, allow_unused=True)
        places, slot = group_places(read_at, inputs["input_ids"].size(0))
        with narrow_top_layer(twin, places):
            narrowed = twin(**inputs, **extra).last_hidden_state
        narrowed = narrowed.reshape(-1, narrowed.size(-1))[slot]  # size = (N, H)
        got = torch.autograd.grad((narrowed * weights).sum(), parameters, allow_unused=True)
        assert_close(f"{name}: scores", narrowed, hidden)
        for (parameter, _), g, w in zip(named, got, want):
            if (g is None) != (w is None):
                raise AssertionError(f"{name}: gradient of {parameter} is missing on one side")
            if g is not None:
                assert_close(f"{name}: gradient of {parameter}", g, w)


@contextmanager
def narrow_top_layer(backbone: nn.Module, places: Tensor) -> Iterator[None]:
    """Within this block, the backbone's last layer (and its output) covers `places` only.

    `places`: the columns read in each row, size = (B, R); the backbone's
    ``last_hidden_state`` is then (B, R, H), row b's entries at ``places[b]``.
    """
    layer = top_layer(backbone)
    if layer is None:
        raise ValueError(f"{type(backbone).__name__} has no top layer that can be narrowed; check can_narrow first")
    handle = layer.register_forward_pre_hook(
        lambda module, args, kwargs: _narrow(places, backbone, module, args, kwargs), with_kwargs=True
    )
    after = layer.register_forward_hook(_check_replayed)
    own = vars(layer).get("_can_checkpoint_with_cache")
    layer._can_checkpoint_with_cache = True  # the replaying cache is read-only
    try:
        yield
    finally:
        handle.remove()
        after.remove()
        vars(layer).pop("_safealign_replay", None)
        if own is None:
            del layer._can_checkpoint_with_cache
        else:
            layer._can_checkpoint_with_cache = own
