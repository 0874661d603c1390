"""`safealign label attributes`: SteerLM attribute values for any responses (fields: `LabelAttributesConfig`)."""

from __future__ import annotations

from typing import Any

import typer

from safealign.cli.common import config_command, console, quiet_transformers

app = typer.Typer(no_args_is_help=True)


def attributes(cfg: Any) -> None:
    """Label every response with attribute values (model-predicted or measured) and write attribute records."""
    from safealign.steer.label import run_label_attributes

    quiet_transformers()
    done = run_label_attributes(cfg)
    filled = ", ".join(f"{name} {n}" for name, n in done["filled"].items())
    console.print(f"read {done['read']} | rejected {done['rejected']} → {done['responses']} response(s); values: {filled}; "
                  f"wrote {done['out']}")


config_command(app, "attributes", "safealign.steer.label:LabelAttributesConfig", attributes,
               "Label responses with SteerLM attributes: an attribute model, reward/cost quintiles, safety labels, length.")
