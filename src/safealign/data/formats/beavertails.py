"""BeaverTails adapters: QA with a 14-key category dict, the single-category CSV variant,
and the BeaverTails-Evaluation prompts."""

from __future__ import annotations

from typing import Any

from safealign.data.errors import RecordError
from safealign.data.formats import fields as f
from safealign.data.records import PromptRecord, QARecord
from safealign.data.taxonomy import BEAVERTAILS, BEAVERTAILS_CATEGORIES

QA_FIELDS = frozenset({"prompt", "response", "category", "is_safe"})
CSV_FIELDS = frozenset({"prompt", "response", "category"})
EVAL_FIELDS = frozenset({"prompt", "category", "category_id"})
PROMPT_LABEL_FIELDS = frozenset({"text", "label", "category"})
PROMPT_LABEL_OPTIONAL = frozenset({"source"})
LABELS = {"safe": True, "harmful": False}


def parse_qa(row: dict[str, Any], textual: bool) -> QARecord:
    """A BeaverTails QA row; `is_safe` must be true exactly when no category is flagged."""
    categories = f.category_flags(row, "category", BEAVERTAILS_CATEGORIES)
    is_safe = f.boolean(row, "is_safe", textual)
    if is_safe == bool(categories):
        detail = f"flags {categories[0]!r}" if categories else "flags no category"
        raise RecordError("is_safe", f"inconsistent safety labels: is_safe is {str(is_safe).lower()} but the record {detail}")
    return QARecord(
        prompt=f.text(row, "prompt"),
        response=f.text(row, "response", allow_empty=True),
        is_safe=is_safe,
        harm_categories=categories,
        taxonomy=BEAVERTAILS,
    )


def parse_single_category(row: dict[str, Any], textual: bool) -> QARecord:
    """The one-category variant (e.g. BeaverTails 30k_train unsafe rows as CSV): every row is unsafe."""
    category = f.category_name(row, "category", BEAVERTAILS_CATEGORIES)
    return QARecord(
        prompt=f.text(row, "prompt"),
        response=f.text(row, "response", allow_empty=True),
        is_safe=False,
        harm_categories=(category,),
        taxonomy=BEAVERTAILS,
    )


def parse_evaluation(row: dict[str, Any], textual: bool) -> PromptRecord:
    """A BeaverTails-Evaluation prompt; `category_id` must be the category's position."""
    category = f.category_name(row, "category", BEAVERTAILS_CATEGORIES)
    category_id = f.integer(row, "category_id", textual)
    if category_id != BEAVERTAILS_CATEGORIES.index(category):
        raise RecordError(
            "category_id", f"{category_id} does not match category {category!r} (id {BEAVERTAILS_CATEGORIES.index(category)})"
        )
    return PromptRecord(prompt=f.text(row, "prompt"), category=category, taxonomy=BEAVERTAILS)


def parse_prompt_label(row: dict[str, Any], textual: bool) -> PromptRecord:
    """A BeaverTails prompt with its label (`harmful` / `safe`) and 14-key category dict.

    The dict may come as a Python-literal string (`"{'animal_abuse': False, ...}"`); it is read
    with `ast.literal_eval`, which evaluates literals only. `safe` must mean no category flagged.
    """
    import ast

    value = row["category"]
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise RecordError("category", "not a literal dict of category: true/false") from None
    categories = f.category_flags({"category": value}, "category", BEAVERTAILS_CATEGORIES)
    label = f.text(row, "label")
    if label not in LABELS:
        raise RecordError("label", f"must be one of {', '.join(LABELS)}, got {label!r}")
    is_safe = LABELS[label]
    if is_safe == bool(categories):
        detail = f"flags {categories[0]!r}" if categories else "flags no category"
        raise RecordError("label", f"inconsistent safety labels: label is {label} but the record {detail}")
    return PromptRecord(prompt=f.text(row, "text"), taxonomy=BEAVERTAILS, is_safe=is_safe, harm_categories=categories,
                        source=f.optional_text(row, "source"))
