"""`safealign data validate | stats | convert | formats`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from safealign.cli.common import console, fail, user_errors
from safealign.data.derive import DERIVATIONS, derive
from safealign.data.errors import LoadReport
from safealign.data.formats import FORMATS
from safealign.data.load import Loaded, load, parse_spec, write_rejects
from safealign.data.stats import compute_stats, stats_dict, write_plots
from safealign.data.write import write_records

app = typer.Typer(no_args_is_help=True)

Paths = Annotated[list[str], typer.Argument(help="Files, dataset folders or hub ids: PATH_OR_NAME[@REVISION][#SPLIT][:PROPORTION].")]
FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given); see `safealign data formats`.")]
SkipOpt = Annotated[bool, typer.Option("--skip-invalid", help="Go on past bad records; write them with their reasons to the rejects file.")]
RejectsOpt = Annotated[Optional[Path], typer.Option("--rejects", help="Where --skip-invalid writes rejected lines (JSONL). Default: <first source>.rejects.jsonl here.")]
DedupeOpt = Annotated[bool, typer.Option("--dedupe", help="Reject records whose content repeats an earlier one.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for mixture proportions.")]


def _load(paths: list[str], fmt: str | None, skip_invalid: bool, rejects: Path | None, dedupe: bool, seed: int) -> Loaded:
    with user_errors():
        loaded = load(paths, format_name=fmt, strict=not skip_invalid, dedupe=dedupe, seed=seed)
    if loaded.report.rejected:
        target = rejects or Path(Path(parse_spec(paths[0]).location).name.split(".")[0] + ".rejects.jsonl")
        n = write_rejects(loaded.report.rejections, target)
        console.print(f"wrote {n} rejected line(s) with reasons to {target}")
    return loaded


def _print_counts(loaded: Loaded) -> None:
    report: LoadReport = loaded.report
    if len(loaded.per_source) > 1 or any(spec.proportion != 1.0 for spec, _, _ in loaded.per_source):
        table = Table(title="sources")
        for col in ("source", "format", "read", "kept", "rejected", "used"):
            table.add_column(col, justify="left" if col in ("source", "format") else "right")
        for spec, rep, used in loaded.per_source:
            table.add_row(spec.location, rep.formats.get(spec.location, "?"), str(rep.read), str(rep.kept), str(rep.rejected), str(used))
        console.print(table)
    formats = ", ".join(sorted(set(report.formats.values()))) or "?"
    console.print(
        f"format: {formats} | read {report.read} | kept {report.kept} | rejected {report.rejected} "
        f"| duplicates {report.duplicates}" + (f" | other side of the split {report.other_side}" if report.other_side else "")
    )
    for reason, n in list(report.reasons().items())[:10]:
        console.print(f"  rejected {n:>6}  {reason}")


@app.command()
def validate(
    paths: Paths,
    format: FormatOpt = None,
    skip_invalid: SkipOpt = False,
    rejects: RejectsOpt = None,
    dedupe: DedupeOpt = False,
) -> None:
    """Check every record; exit 1 at the first bad one (or, with --skip-invalid, when any was rejected)."""
    loaded = _load(paths, format, skip_invalid, rejects, dedupe, 0)
    _print_counts(loaded)
    if loaded.report.rejected:
        raise typer.Exit(1)
    console.print("[green]all records valid[/]", markup=True)


@app.command()
def stats(
    paths: Paths,
    format: FormatOpt = None,
    skip_invalid: SkipOpt = False,
    rejects: RejectsOpt = None,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Write PNG charts into this folder.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON instead of tables.")] = False,
) -> None:
    """Counts, safe ratio, harm categories, severity, better-vs-safer agreement and lengths."""
    loaded = _load(paths, format, skip_invalid, rejects, False, 0)
    st = compute_stats(loaded.records)
    data = stats_dict(st)
    if as_json:
        data["load"] = {"read": loaded.report.read, "kept": loaded.report.kept, "rejected": loaded.report.rejected,
                        "other_side": loaded.report.other_side}
        print(json.dumps(data, indent=2))
    else:
        _print_counts(loaded)
        _print_stats(data)
    if plots is not None:
        for path in write_plots(st, plots):
            console.print(f"plot: {path}")


def _print_stats(data: dict) -> None:
    overview = Table(title="overview", show_header=False)
    for kind, n in data["records"].items():
        overview.add_row(f"{kind} records", str(n))
    for state, n in data["responses"].items():
        overview.add_row(f"{state} responses", str(n))
    for state, n in data["prompts"].items():
        overview.add_row(f"{state} prompts", str(n))
    if data["safe_ratio"] is not None:
        overview.add_row("safe ratio", f"{data['safe_ratio']:.3f}")
    if data["dual_preference_pairs"]:
        overview.add_row("better response is the safer one", f"{data['better_is_safer']:.3f} of {data['dual_preference_pairs']} pairs")
        for key, n in data["better_safer"].items():
            overview.add_row(f"  {key}", str(n))
    if data["pairs_without_helpfulness_order"]:
        overview.add_row("dual pairs with a safety order only", str(data["pairs_without_helpfulness_order"]))
    if data["pair_safety"]:
        for key, n in data["pair_safety"].items():
            overview.add_row(f"  pairs {key}", str(n))
    overview.add_row("multi-turn records", str(data["multi_turn_records"]))
    console.print(overview)
    for title, key in (("harm categories (unsafe responses)", "harm_categories"), ("prompt categories", "prompt_categories")):
        if data[key]:
            table = Table(title=title)
            table.add_column("category")
            table.add_column("count", justify="right")
            for name, n in data[key].items():
                table.add_row(name, str(n))
            console.print(table)
    if data["severity"]:
        table = Table(title="severity")
        for name in data["severity"]:
            table.add_column(name, justify="right")
        table.add_row(*(str(n) for n in data["severity"].values()))
        console.print(table)
    if data["attributes_mean"]:
        table = Table(title="attributes")
        table.add_column("attribute")
        table.add_column("mean", justify="right")
        table.add_column("missing", justify="right")
        for name, mean in data["attributes_mean"].items():
            table.add_row(name, "-" if mean is None else f"{mean:.2f}", str(data["attributes_missing"].get(name, 0)))
        console.print(table)
    lengths = Table(title="lengths (words)")
    for col in ("", "min", "median", "p90", "max", "mean"):
        lengths.add_column(col, justify="right")
    for name in ("prompt_words", "response_words"):
        s = data[name]
        if s:
            lengths.add_row(name.split("_")[0], *(f"{s[k]:.1f}" if k == "mean" else f"{s[k]:g}" for k in ("min", "median", "p90", "max", "mean")))
    console.print(lengths)


@app.command()
def convert(
    paths: Paths,
    to: Annotated[Path, typer.Option("--to", help="Output file: .jsonl, .jsonl.gz or .parquet.")],
    format: FormatOpt = None,
    derive_to: Annotated[Optional[str], typer.Option("--derive", help=f"From dual-preference pairs derive: {', '.join(DERIVATIONS)}.")] = None,
    skip_invalid: SkipOpt = False,
    rejects: RejectsOpt = None,
    dedupe: DedupeOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Write canonical records (optionally derived: QA records or single preferences)."""
    loaded = _load(paths, format, skip_invalid, rejects, dedupe, seed)
    records = loaded.records
    _print_counts(loaded)
    if derive_to is not None:
        try:
            records, skipped = derive(records, derive_to)
        except ValueError as exc:
            raise fail(str(exc)) from None
        note = f" ({skipped} pairs skipped: better and safer disagree)" if skipped else ""
        console.print(f"derived {len(records)} {derive_to} record(s) from {len(loaded.records)} pair(s){note}")
    with user_errors():
        out = write_records(records, to)
    console.print(f"wrote {len(records)} record(s) to {out}")


@app.command("formats")
def list_formats() -> None:
    """The source formats safealign reads."""
    table = Table(title="formats (detected in this order)")
    table.add_column("name")
    table.add_column("gives")
    table.add_column("description")
    for fmt in FORMATS.values():
        table.add_row(fmt.name, fmt.produces, fmt.description)
    console.print(table)
