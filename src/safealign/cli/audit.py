"""`safealign audit labels | clean`: how credible labels are, which are wrong, and what they should be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from safealign.cli.common import console, fail, user_errors

app = typer.Typer(no_args_is_help=True)

Paths = Annotated[list[str], typer.Argument(help="Files, dataset folders or hub ids: PATH_OR_NAME[@REVISION][#SPLIT][%SIDE=SHARE][:PROPORTION].")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")]


@app.command()
def labels(
    paths: Paths,
    out: Annotated[Path, typer.Option("--out", help="Folder for label_issues.jsonl, summary.json and report.html.")],
    label: Annotated[str, typer.Option("--label", help="is_safe, categories, severity, safer, better, chosen or rating.")] = "is_safe",
    method: Annotated[str, typer.Option("--method", help="simifeat-rank (HOC's noise share per class), simifeat-vote, confident (out-of-fold LR + confident learning) or hoc (estimate only).")] = "simifeat-rank",
    embedder: Annotated[str, typer.Option("--embedder", help="Sentence encoder: alias (minilm), folder or hub id.")] = "minilm",
    k: Annotated[int, typer.Option("--k", help="Nearest neighbours per item.")] = 10,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens embedded per text.")] = 256,
    fmt: FormatOpt = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Go on past bad records (counted).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pair orientations and the folds.")] = 0,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads.")] = None,
) -> None:
    """Estimate the noise of a label (transition matrix T, clean prior), flag the likely errors and suggest fixes."""
    from safealign.audit.run import METHODS, audit_labels, write_audit
    from safealign.data.load import load

    if method not in METHODS:
        raise fail(f"--method: must be one of {', '.join(METHODS)}, got {method!r}", code=2)
    if threads:
        import torch

        torch.set_num_threads(threads)
    with user_errors():
        loaded = load(paths, format_name=fmt, strict=not skip_invalid)
        console.print(f"read {loaded.report.read} | kept {loaded.report.kept} | rejected {loaded.report.rejected}")
        try:
            audit = audit_labels(loaded.records, label, method, k, embedder, max_length, seed=seed)
        except ValueError as exc:
            raise fail(str(exc), code=2) from None
        summary = write_audit(audit, loaded.records, out)
    table = Table(title=f"{label} audit ({method}, k = {k}, {embedder})")
    for col in ("label set", "items", "given per class", "estimated noise", "flagged per class"):
        table.add_column(col, justify="left" if col == "label set" else "right")
    for s in summary["sets"]:
        noise = "" if s["noise_rate"] is None else f"{s['noise_rate']:.3f}"
        given = " / ".join(f"{c} {n}" for c, n in zip(s["classes"], s["given_per_class"]))
        flagged = " / ".join(map(str, s.get("flagged_per_class", []))) or "-"
        table.add_row(s["label"], str(s["items"]), given, noise, flagged)
    console.print(table)
    for s in summary["sets"]:
        if "transition" in s:
            rows = "; ".join(" ".join(f"{v:.2f}" for v in row) for row in s["transition"])
            console.print(f"T ({s['label']}, rows true, columns given): {rows}")
    console.print(f"flagged {summary['flagged']}; wrote {out}/label_issues.jsonl, {out}/summary.json, {out}/report.html")


@app.command()
def clean(
    path: Annotated[str, typer.Argument(help="The data that was audited.")],
    issues: Annotated[Path, typer.Option("--issues", help="label_issues.jsonl from `safealign audit labels`.")],
    to: Annotated[Path, typer.Option("--to", help="Where the cleaned records go (.jsonl, .jsonl.gz or .parquet; canonical).")],
    min_confidence: Annotated[float, typer.Option("--min-confidence", help="Apply only flags whose suggestion has at least this confidence.")] = 0.0,
    mode: Annotated[str, typer.Option("--mode", help="relabel (apply the suggested label) or drop (leave the record out).")] = "relabel",
    fmt: FormatOpt = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Go on past bad records (counted).")] = False,
) -> None:
    """Write the records with the flagged labels fixed (or the records dropped); provenance in each record's meta."""
    from safealign.audit.run import clean_records
    from safealign.data.load import load
    from safealign.data.write import write_records

    if mode not in ("relabel", "drop"):
        raise fail(f"--mode: must be relabel or drop, got {mode!r}", code=2)
    with user_errors():
        loaded = load(path, format_name=fmt, strict=not skip_invalid)
        rows = []
        for number, line in enumerate(issues.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not an object")
                missing = [k for k in ("source", "line", "field", "given", "suggested", "confidence", "is_issue") if k not in row]
            except ValueError as exc:
                raise fail(f"{issues}:{number}: not a label-issue row ({exc})", code=2) from None
            if missing:
                raise fail(f"{issues}:{number}: {missing[0]}: missing", code=2)
            rows.append(row)
        cleaned, report = clean_records(loaded.records, rows, min_confidence, mode)
        write_records(cleaned, to)
    console.print(f"read {report.read} | kept {report.kept} | relabelled {report.relabelled} | dropped {report.dropped}"
                  f" | issue rows naming no record {report.unmatched}")
    console.print(f"wrote {len(cleaned)} records to {to}")
