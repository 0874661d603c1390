"""Load models and tokenizers by alias, local folder or hub id.

torch and transformers are imported inside the functions so that importing
`safealign.models` (e.g. by the CLI) stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safealign.models.registry import resolve_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class DeviceError(ValueError):
    """A device was asked for that this machine does not have, or that is not a device at all."""


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one (CUDA, then Apple MPS), else the CPU; or an explicit device.

    An explicit accelerator that this machine lacks is a clear error, not a crash later.
    """
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device: {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device: {name!r} asked for, but torch sees no CUDA device here; use auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device: {name!r} asked for, but this machine has no MPS device; use auto or cpu")
    return device


def enable_gradient_checkpointing(model: Any) -> None:
    """Gradient checkpointing with ``use_reentrant=False`` on a transformers model.

    transformers 5 renamed ``gradient_checkpointing_enable`` (now a deprecated alias) to
    ``activation_checkpointing_enable``; both make embedding outputs require grad, which
    frozen (LoRA) backbones need for gradients to reach the adapters.
    """
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def to_torch_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    """Map ``"float32"``/``"bfloat16"``/... to a torch dtype; ``"auto"`` passes through."""
    import torch

    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'auto'.")
    return resolved


def load_causal_lm(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str = "float32",
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a causal LM via `resolve_model` and ``AutoModelForCausalLM``.

    `dtype` defaults to float32 (CPU-friendly, deterministic); pass ``"auto"``
    to keep the checkpoint's own dtype. Extra kwargs go to ``from_pretrained``.
    """
    path = resolve_model(name_or_path, cache_dir)  # fail fast, before the heavy import
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=to_torch_dtype(dtype), **kwargs)


def load_encoder(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str = "float32",
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a bare encoder (e.g. ``minilm``) via `resolve_model` and ``AutoModel``."""
    path = resolve_model(name_or_path, cache_dir)
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, dtype=to_torch_dtype(dtype), **kwargs)


def load_tokenizer(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> PreTrainedTokenizerBase:
    """Load the tokenizer that goes with `name_or_path` via ``AutoTokenizer``."""
    path = resolve_model(name_or_path, cache_dir)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **kwargs)
