"""The `safealign` command line: one Typer app with a sub-app per area."""

from __future__ import annotations

import typer

from safealign.cli import annotate as annotate_cli
from safealign.cli import audit as audit_cli
from safealign.cli import data as data_cli
from safealign.cli import evaluate as evaluate_cli
from safealign.cli import generate as generate_cli
from safealign.cli import guard as guard_cli
from safealign.cli import label as label_cli
from safealign.cli import models as models_cli
from safealign.cli import moderate as moderate_cli
from safealign.cli import reason as reason_cli
from safealign.cli import serve as serve_cli
from safealign.cli import train as train_cli
from safealign.cli.run import report, run

app = typer.Typer(
    name="safealign",
    help="Safety alignment with decoupled helpfulness and harmlessness preferences.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cli.app, name="data", help="Validate, describe and convert preference data.")
app.add_typer(audit_cli.app, name="audit", help="Audit labels: how credible they are, which are wrong, and the fixes.")
app.add_typer(annotate_cli.build_app, name="build", help="Build data: draft dual-preference pairs with machine pre-labels.")
app.add_typer(annotate_cli.app, name="annotate", help="The annotation studio: import pairs, serve the web app, export labels.")
app.add_typer(label_cli.app, name="label", help="Label data with models or measures (SteerLM attributes).")
app.add_typer(models_cli.app, name="models", help="Install and resolve offline models.")
app.add_typer(train_cli.app, name="train", help="Train score models (reward, cost, attributes) and policies (SFT, DPO, PPO, PPO-Lagrangian).")
app.add_typer(evaluate_cli.app, name="eval", help="Evaluate score models, moderators and policies.")
app.add_typer(reason_cli.app, name="reason", help="ActivationReasoning: SAE concepts in the activations, rules over them, steering.")
app.add_typer(serve_cli.app, name="serve", help="Serve models over HTTP (moderation: OpenAI-compatible /v1/moderations).")
generate_cli.register(app)
moderate_cli.register(app)
guard_cli.register(app)
app.command(name="run")(run)
app.command(name="report")(report)


def main() -> None:
    """Entry point of the `safealign` console script."""
    app(prog_name="safealign")
