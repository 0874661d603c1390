"""`safealign moderate --model DIR --input PATH --output PATH`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from safealign.cli.common import console, fail, user_errors


def moderate(
    model: Annotated[Path, typer.Option("--model", help="A moderation folder (from `safealign train moderation`).")],
    input: Annotated[list[str], typer.Option("--input", help="Records with responses (JSONL of {prompt, response}, QA data, pairs); repeat for more.")],
    output: Annotated[Path, typer.Option("--output", help="JSON Lines: one verdict per response.")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Go on past bad records; they go to --rejects.")] = False,
    rejects: Annotated[Optional[Path], typer.Option("--rejects", help="Where rejected lines go (default: OUTPUT.rejects.jsonl).")] = None,
    batch_size: Annotated[int, typer.Option(help="Responses per forward pass.")] = 32,
) -> None:
    """Judge every response: flagged, unsafe probability, harm categories and severity."""
    from transformers.utils import logging as hf_logging

    from safealign.data.load import load, write_rejects
    from safealign.moderation.judge import moderate_records
    from safealign.moderation.model import Moderator

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with user_errors():
        loaded = load(input, format, strict=not skip_invalid)
        moderator = Moderator.load(model)
    report = loaded.report
    if report.rejected:
        target = rejects or output.with_suffix(".rejects.jsonl")
        write_rejects(report.rejections, target)
        console.print(f"wrote {report.rejected} rejected line(s) with reasons to {target}")
    output.parent.mkdir(parents=True, exist_ok=True)
    flagged = total = 0
    try:
        with open(output, "w", encoding="utf-8") as out:
            for row in moderate_records(moderator, loaded.records, batch_size):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                total += 1
                flagged += row["flagged"]
    except ValueError as exc:
        raise fail(str(exc)) from None
    console.print(f"read {report.read} | kept {report.kept} | rejected {report.rejected} | "
                  f"verdicts {total} | flagged {flagged} | wrote {output}")
