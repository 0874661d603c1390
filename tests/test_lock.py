"""The committed lock (requirements.txt) covers pyproject.toml exactly, CPU-only, and is what is installed."""

from __future__ import annotations

import os
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")
TOUCHED_INTERNALS = ("transformers", "accelerate", "peft")  # see safealign.models.selfcheck


def _lock() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            pins[current] = (pins[current][0], pins[current][1] + 1)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = project["project"]["dependencies"] + project["project"]["optional-dependencies"]["dev"]
    names += [line for line in (REPO / "requirements/build.in").read_text().splitlines() if line and not line.startswith("#")]
    return [Requirement(n) for n in names]


def test_every_declared_dependency_is_pinned_with_hashes_within_its_range() -> None:
    pins = _lock()
    for requirement in _declared():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            assert str(requirement.specifier) == "==2.13.0"  # installed first, apart from the lock
            assert name not in pins
            continue
        assert name in pins, f"{name} is not in requirements.txt: run `make lock`"
        pinned, hashes = pins[name]
        assert requirement.specifier.contains(pinned, prereleases=True), f"{name}=={pinned} is outside {requirement.specifier}"
        assert hashes >= 1, name
    assert all(hashes >= 1 for _, hashes in pins.values())


def test_the_lock_is_cpu_only() -> None:
    cuda = [n for n in _lock() if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert cuda == []


def test_packages_whose_internals_we_touch_have_an_upper_bound() -> None:
    declared = {canonicalize_name(r.name): r for r in _declared()}
    for name in TOUCHED_INTERNALS:
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in declared[name].specifier), name


@pytest.mark.skipif(os.environ.get("SAFEALIGN_UNLOCKED") == "1", reason="make test-latest installs past the lock")
def test_the_installed_packages_are_the_locked_ones() -> None:
    wrong = {}
    for name, (pinned, _) in _lock().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong[name] = "not installed"
            continue
        if Version(installed) != Version(pinned):
            wrong[name] = f"{installed} installed, {pinned} locked"
    assert wrong == {}, "install with `make install` (pip install --require-hashes --no-deps -r requirements.txt)"
    assert version("torch").split("+")[0] == "2.13.0"
