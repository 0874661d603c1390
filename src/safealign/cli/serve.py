"""`safealign serve moderation --model DIR [--config FILE.yaml] [--field value ...]` (fields: `ServeConfig`)."""

from __future__ import annotations

import logging
from typing import Any

import typer

from safealign.cli.common import config_command, err_console, quiet_transformers

app = typer.Typer(no_args_is_help=True)


def moderation(cfg: Any) -> None:
    """Serve a moderator over HTTP: OpenAI-compatible POST /v1/moderations, GET /healthz."""
    import torch
    import uvicorn

    from safealign.moderation.model import Moderator
    from safealign.moderation.server import create_app

    quiet_transformers()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    # One core is left to the event loop and clients: torch's OpenMP threads wait on each other, and
    # when other work takes one of their cores, throughput fell 16-fold here (2 threads on 2 cores).
    torch.set_num_threads(cfg.threads)  # loading too: never more threads than asked for
    server_app = create_app(Moderator.load(cfg.model), cfg)
    err_console.print(f"serving {cfg.model_name} on http://{cfg.host}:{cfg.port}/v1/moderations "
                      f"(batch ≤ {cfg.max_batch}, wait {cfg.batch_wait_ms:g} ms, {cfg.threads} thread(s){', bf16' if cfg.bf16 else ''}, "
                      f"{'API key required' if cfg.api_key else 'no API key'})")
    uvicorn.run(server_app, host=cfg.host, port=cfg.port, access_log=cfg.access_log, log_level="info")


config_command(app, "moderation", "safealign.moderation.server:ServeConfig", moderation,
               "Serve a moderator over HTTP: OpenAI-compatible POST /v1/moderations, GET /healthz.")
