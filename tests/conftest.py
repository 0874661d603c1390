"""Shared fixtures: the real third-party data and a CLI runner."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_SHARED = REPO.parent / "shared" / "data"
# The real data lives in ../shared/data; the package bundles an identical copy of some of it,
# so tests that need only those files pass where ../shared is absent.
DATA = _SHARED if _SHARED.is_dir() else REPO / "src" / "safealign" / "assets" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Nothing a test does may write to the user's Hugging Face caches: a scratch home per session,
# set before transformers or datasets is imported (subprocesses inherit it).
_HF_HOME = tempfile.mkdtemp(prefix="safealign-tests-hf-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")
os.environ["MPLCONFIGDIR"] = os.path.join(_HF_HOME, "matplotlib")  # matplotlib's font cache, too
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("TRANSFORMERS_CACHE", None)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test: other jobs share the 2 cores, and tiny models gain nothing from more."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def data_dir() -> Path:
    """Folder of the real sample data (the bundled files at least)."""
    return DATA


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, for files the package may not bundle; the test is skipped where it is absent."""
    if not _SHARED.is_dir():
        pytest.skip("needs ../shared/data (files that may not be copied into the project)")
    return _SHARED


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (no fixed ports: parallel runs and other jobs must not collide)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_process_launch() -> list[str]:
    """`accelerate launch` of 2 CPU processes (gloo) on a free port, then `-m safealign`."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "safealign"]


def run_cli(*args: str, cwd: Path | None = None, check: bool | None = None) -> subprocess.CompletedProcess:
    """Run `safealign ARGS...` in a subprocess, as a user would."""
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", "from safealign.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings written as-is) one per line."""
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path
