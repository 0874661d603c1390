"""`safealign annotate serve | import | export | users add` and `safealign build pairs`: build and label dual-preference data."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from safealign.cli.common import config_command, console, fail, quiet_transformers, user_errors

app = typer.Typer(no_args_is_help=True)
users_app = typer.Typer(no_args_is_help=True)
app.add_typer(users_app, name="users", help="Studio users: add.")
build_app = typer.Typer(no_args_is_help=True)

DEFAULT_DB = "sqlite:///runs/annotate/studio.db"
DbOpt = Annotated[str, typer.Option("--db", help="SQLAlchemy URL (sqlite:///PATH, postgresql+psycopg://USER@HOST/DB) or a plain path (SQLite).")]
OverlapOpt = Annotated[int, typer.Option("--overlap", help="Annotators per item.")]


def database_url(value: str) -> str:
    """A SQLAlchemy URL; a plain path means a SQLite file (its folder is created)."""
    if "://" not in value:
        value = f"sqlite:///{value}"
    if value.startswith("sqlite:///") and value != "sqlite:///:memory:":
        Path(value.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return value


def open_store(db: str, overlap: int = 2) -> Any:
    from safealign.annotate.store import Store

    try:
        return Store(database_url(db), overlap)
    except Exception as exc:  # a bad URL or an unreachable server: say which, not a traceback
        from sqlalchemy.exc import ArgumentError, OperationalError

        if isinstance(exc, (ArgumentError, OperationalError, ModuleNotFoundError, ValueError)):
            raise fail(f"--db {db}: {exc}") from None
        raise


@app.command()
def serve(
    db: DbOpt = DEFAULT_DB,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port.")] = 8800,
    overlap: OverlapOpt = 2,
    secure_cookies: Annotated[bool, typer.Option("--secure-cookies", help="Mark cookies Secure (behind HTTPS).")] = False,
    max_body: Annotated[int, typer.Option("--max-body", help="Largest request body in bytes (413 above).")] = 64 * 1024,
) -> None:
    """Run the annotation studio (log in at http://HOST:PORT/)."""
    import uvicorn

    from safealign.annotate.app import create_app

    store = open_store(db, overlap)
    if not store.users():
        raise fail("no users yet: add one first, e.g. `safealign annotate users add NAME --role admin`")
    console.print(f"studio on http://{host}:{port}/ ({store.counts()['items']} items, overlap {overlap}, {database_url(db)})")
    uvicorn.run(create_app(store, secure_cookies, max_body), host=host, port=port, log_level="warning")


@app.command(name="import")
def import_(
    paths: Annotated[list[str], typer.Argument(help="Pairs in any supported format, or an audit's label_issues.jsonl.")],
    db: DbOpt = DEFAULT_DB,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Go on past bad records (counted).")] = False,
) -> None:
    """Add pairs to the studio (idempotent: a pair already there is counted, not added twice)."""
    from safealign.annotate.exchange import audited_records, import_records, is_audit_file
    from safealign.data.load import load

    store = open_store(db)
    with user_errors():
        for path in paths:
            if Path(path).is_file() and is_audit_file(Path(path)):
                records, notes, flagged = audited_records(Path(path))
                console.print(f"{path}: an audit; {flagged} flagged label(s) on {len(records)} record(s)")
                report = import_records(store, records, notes)
            else:
                loaded = load([path], format_name=fmt, strict=not skip_invalid)
                console.print(f"{path}: read {loaded.report.read} | kept {loaded.report.kept} | rejected {loaded.report.rejected}")
                report = import_records(store, loaded.records)
            console.print(f"{path}: {report.read} record(s): added {report.added} | already there {report.already_there} | "
                          f"not pairs {len(report.rejected)}")
            for line in report.rejected[:5]:
                console.print(f"  {line}")


@app.command()
def export(
    to: Annotated[Path, typer.Option("--to", help="PKU-SafeRLHF v1 JSON Lines (with meta).")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Write every labelled item: adjudicated labels, else the majority; tied items are left out and listed."""
    from safealign.annotate.exchange import write_export

    store = open_store(db)
    report = write_export(store, to)
    console.print(f"{report.items} item(s): exported {report.exported} ({report.adjudicated} adjudicated) | "
                  f"unanswered {report.unanswered} | unresolved {len(report.unresolved)} → {to}")
    if report.unresolved:
        console.print(f"unresolved (tied or contradictory majority; adjudicate them): items {', '.join(map(str, report.unresolved[:20]))}")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Option("--role", help="annotator or admin.")] = "annotator",
    db: DbOpt = DEFAULT_DB,
    password_file: Annotated[Optional[Path], typer.Option("--password-file", help="Read the password from this file (else SAFEALIGN_PASSWORD, else a prompt).")] = None,
) -> None:
    """Add a user (the password is never taken on the command line)."""
    from safealign.annotate.store import StoreError

    if password_file is not None:
        password = password_file.read_text(encoding="utf-8").strip()
    elif os.environ.get("SAFEALIGN_PASSWORD"):
        password = os.environ["SAFEALIGN_PASSWORD"]
    else:
        password = getpass.getpass(f"password for {name}: ")
    store = open_store(db)
    try:
        user_id = store.add_user(name, password, role)
    except StoreError as exc:
        raise fail(str(exc)) from None
    console.print(f"added {role} {name} (id {user_id})")


def build_pairs(cfg: Any) -> None:
    """Two responses per prompt with machine pre-labels, in the PKU-SafeRLHF v1 schema."""
    from safealign.annotate.build import run_build

    quiet_transformers()
    done = run_build(cfg)
    console.print(f"{done['prompts']} prompt(s): wrote {done['written']} pair(s), {done['already_done']} already in {done['out']}, "
                  f"{done['identical']} left out (both answers identical)")


config_command(build_app, "pairs", "safealign.annotate.build:BuildConfig", build_pairs,
               "Two responses per prompt with machine pre-labels (moderator, reward, cost), in the PKU-SafeRLHF v1 schema.")


def build_janus(cfg: Any) -> None:
    """System-message preference pairs (Janus) from labelled dual pairs; never an unsafe chosen response."""
    from safealign.steer.janus import run_janus_build

    done = run_janus_build(cfg)
    skipped = ", ".join(f"{why} {n}" for why, n in sorted(done["skipped"].items())) or "none"
    console.print(f"read {done['read']} pair(s), {done['messages']} message(s): wrote {done['made']} preference pair(s) "
                  f"to {done['out']}; left out: {skipped}")


config_command(build_app, "janus", "safealign.steer.janus:JanusBuildConfig", build_janus,
               "System-message preference pairs (Janus) from labelled dual pairs: the message decides which safe response is chosen.")
