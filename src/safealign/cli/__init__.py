"""The `safealign` command line: one Typer app with a sub-app per area."""

from __future__ import annotations

import typer

from safealign.cli import data as data_cli
from safealign.cli import models as models_cli

app = typer.Typer(
    name="safealign",
    help="Safety alignment with decoupled helpfulness and harmlessness preferences.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cli.app, name="data", help="Validate, describe and convert preference data.")
app.add_typer(models_cli.app, name="models", help="Install and resolve offline models.")


def main() -> None:
    """Entry point of the `safealign` console script."""
    app()
