"""Self-checks for code that relies on a library's private behaviour.

Some fast paths here depend on how transformers, accelerate or peft work inside, not only on
what they document: the top decoder layer run at the read tokens only (`readout`), packed
pairs through a custom 4D attention mask (`packing`), the optimizer stepped past accelerate's
wrapper. A new release can change any of that. Each such path asks `verified` first: the
check runs once per process and per key (the class involved and the library versions), on a
tiny input against the public path, and a failure turns the fast path off with one warning
that names what failed. The public path is then used: slower, never wrong, never a crash.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Hashable, Iterator
from contextlib import ExitStack, contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from torch import nn


class FallbackWarning(RuntimeWarning):
    """A fast path failed its self-check against the installed libraries; the public path is used."""


_RESULTS: dict[Hashable, bool] = {}


@functools.cache
def library_versions() -> tuple[str, ...]:
    """`name==version` of the libraries whose internals the fast paths touch."""
    found = []
    for name in ("torch", "transformers", "accelerate", "peft"):
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} absent")
    return tuple(found)


def verified(key: Hashable, check: Callable[[], None], what: str, fallback: str) -> bool:
    """Whether `check()` passes (no exception); run once per `key` and library versions.

    On a failure, one `FallbackWarning`: "`what` failed its self-check (...); `fallback`".
    """
    full_key = (key, library_versions())
    if full_key not in _RESULTS:
        try:
            with _plain_mode():
                check()
        except Exception as error:  # any failure means the private behaviour is not what we rely on
            _RESULTS[full_key] = False
            warnings.warn(
                f"safealign: {what} failed its self-check with {', '.join(library_versions())} "
                f"({type(error).__name__}: {str(error)[:300]}); {fallback}.",
                FallbackWarning,
                stacklevel=3,
            )
        else:
            _RESULTS[full_key] = True
    return _RESULTS[full_key]


@contextmanager
def _plain_mode() -> Iterator[None]:
    """fp32 with autograd on, whatever the caller's context (no_grad scoring, bf16 autocast)."""
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield


def forget() -> None:
    """Drop every cached result (tests that simulate an upstream change)."""
    _RESULTS.clear()


_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 8, "n_embd": 32, "n_inner": 64, "n_layer": 2, "n_head": 4,
         "max_position_embeddings": 64, "n_positions": 64, "vocab_size": 64}


def tiny_twin(model: nn.Module, seed: int = 0) -> nn.Module:
    """A tiny random model of `model`'s class and configuration (hidden 32, 2 layers), fp32, CPU, eval mode.

    Every setting of the model's config that does not set a size is kept (rotary scaling,
    biases, norms, the attention implementation), so the twin runs the same code paths. The
    caller's random state is left as it was.
    """
    config = model.config
    settings = config.to_dict()
    for key in ("quantization_config", "dtype", "torch_dtype", "_name_or_path", "auto_map"):
        settings.pop(key, None)
    settings.update({k: v for k, v in _TINY.items() if k in settings})
    # No dropout (GPT-2 calls it `*_pdrop`): a twin in training mode, where checkpointing acts, stays deterministic.
    settings.update({k: 0.0 for k, v in settings.items() if ("dropout" in k or k.endswith("pdrop")) and isinstance(v, float)})
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(settings.get(key), int) and settings[key] >= _TINY["vocab_size"]:
            settings[key] = None
    if isinstance(settings.get("layer_types"), list):
        settings["layer_types"] = settings["layer_types"][: _TINY["num_hidden_layers"]]
    tiny = type(config)(**settings)
    tiny._attn_implementation = config._attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = type(model)(tiny)
    return twin.float().eval()


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, tolerance: float = 1e-4) -> None:
    """Raise AssertionError naming `name` when the two tensors differ beyond `tolerance` (relative to scale)."""
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    got, want = got.detach().float(), want.detach().float()
    scale = float(want.abs().max()) + 1e-6
    error = float((got - want).abs().max())
    if not error <= tolerance * scale:
        raise AssertionError(f"{name}: off by {error:.3g} (scale {scale:.3g})")


def first_output(output: Any) -> torch.Tensor:
    """The logits of a causal LM's output, else its last hidden state."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


__all__ = ["FallbackWarning", "assert_close", "first_output", "forget", "library_versions", "tiny_twin", "verified"]
