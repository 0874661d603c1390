"""Imports follow the data flow (DESIGN.md §1): every import in src/, at any depth, checked against the allowed edges."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "safealign"
# part -> the parts of safealign it may import (besides itself); None = anything
ALLOWED: dict[str, set[str] | None] = {
    "data": set(),
    "assets": set(),
    "models": {"data", "assets"},
    "inference": {"data", "models", "config"},
    "losses": set(),
    "config": set(),
    "train": {"data", "models", "inference", "losses", "config"},
    "moderation": {"data", "models", "inference", "losses", "config", "train"},
    "evaluate": {"data", "models", "inference", "config", "moderation", "reasoning"},
    "audit": {"data", "models"},
    "annotate": {"data", "models", "inference", "moderation", "config"},
    "steer": {"data", "models", "inference", "config", "evaluate", "moderation"},
    "reasoning": {"data", "models", "inference", "config", "train"},
}


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):  # function-level imports too: hiding a cycle in a function does not count
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("safealign."):
            found.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("safealign.")]
    return found


def test_imports_follow_the_data_flow() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        allowed = ALLOWED.get(part)
        if allowed is None:
            continue
        for line, target in _imports(path):
            if target != part and target not in allowed:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {part} imports {target}")
    assert wrong == []


def test_the_check_sees_function_level_imports(tmp_path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from safealign.evaluate.preference import x\n")
    assert _imports(probe) == [(2, "evaluate")]
