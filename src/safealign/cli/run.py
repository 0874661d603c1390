"""`safealign run PIPELINE.yaml` and `safealign report RUN_DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safealign.cli.common import console, fail, user_errors


def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML: run_dir and stages.")],
    set_: Annotated[list[str], typer.Option("--set", help="NAME=VALUE: a variable the pipeline declares under vars (repeat).")] = [],  # noqa: B006
) -> None:
    """Run a pipeline: finished stages are skipped, an interrupted one resumes; prints the report path."""
    from transformers.utils import logging as hf_logging

    from safealign.pipeline import run_pipeline
    from safealign.train.loop import TrainingError

    overrides: dict[str, str] = {}
    for item in set_:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise fail(f"--set {item}: expected NAME=VALUE", code=2)
        overrides[name] = value
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with user_errors():
        try:
            run_dir = run_pipeline(pipeline, log=lambda m: console.print(m, soft_wrap=True), overrides=overrides)
        except TrainingError as exc:
            raise fail(str(exc)) from None
    report = run_dir / "report.html"
    console.print(f"run folder: {run_dir}" + (f"\nreport: {report}" if report.is_file() else ""))


def report(run_dir: Annotated[Path, typer.Argument(help="A run folder written by `safealign run`.")]) -> None:
    """(Re)write report.html of a run folder from its pipeline.yaml and stage outputs."""
    from safealign.pipeline import load_pipeline
    from safealign.report import write_report

    with user_errors():
        _, stages = load_pipeline(run_dir / "pipeline.yaml")
        out = write_report(run_dir, [(s.name, s.kind) for s in stages])
    console.print(f"report: {out}")
