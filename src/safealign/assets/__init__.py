"""Data bundled with safealign: real third-party samples for the quickstart and tests.

See `data/PROVENANCE.md` beside this file for sources and licenses (CC-BY-NC-4.0 data is
for research and non-commercial use).
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"


def sample_path(relative: str) -> Path:
    """Path of a bundled sample file, e.g. `sample_path("pku_saferlhf/v1_test_sample.jsonl")`."""
    path = DATA_DIR / relative
    if not path.is_file():
        known = sorted(str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*") if p.is_file())
        raise FileNotFoundError(f"no bundled sample {relative!r}; known: {', '.join(known)}")
    return path
