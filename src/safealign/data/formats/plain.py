"""Plain prompt/response rows without labels (what a policy wrote, to be judged or scored)."""

from __future__ import annotations

from typing import Any

from safealign.data.formats import fields as f
from safealign.data.records import QARecord

REQUIRED = frozenset({"prompt", "response"})
OPTIONAL = frozenset({"id", "system", "category", "origin"})


def parse_prompt_response(row: dict[str, Any], textual: bool) -> QARecord:
    """An unlabelled QA record; `id`, `category` and an earlier `origin` are kept in `meta`."""
    meta = {k: row[k] for k in ("id", "category", "origin") if row.get(k) is not None} or None
    return QARecord(
        prompt=f.text(row, "prompt"),
        response=f.text(row, "response", allow_empty=True),
        system=f.optional_text(row, "system"),
        meta=meta,
    )
