"""`safealign serve moderation --model DIR [--host H --port N --api-key KEY ...]`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from safealign.cli.common import err_console, fail, user_errors

app = typer.Typer(no_args_is_help=True)


@app.command("moderation")
def moderation(
    model: Annotated[Path, typer.Option("--model", help="A moderation folder (from `safealign train moderation`).")],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="SAFEALIGN_API_KEY", show_default=False,
        help="Require 'Authorization: Bearer KEY' (default: $SAFEALIGN_API_KEY; none: open).")] = None,
    max_batch: Annotated[int, typer.Option(help="Most inputs in one model call.")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(help="Wait after the first queued input for more to join its call.")] = 2.0,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body (413 above).")] = 1_000_000,
    max_inputs: Annotated[int, typer.Option(help="Most inputs per request (422 above).")] = 256,
    max_chars: Annotated[int, typer.Option(help="Most characters per input, prompt + response (422 above).")] = 32_000,
    threads: Annotated[Optional[int], typer.Option(
        show_default=False, help="Torch threads of the model worker (default: CPU cores - 1, at least 1).")] = None,
    forward_batch: Annotated[int, typer.Option(help="Inputs per forward pass (length-sorted) within a model call.")] = 16,
    bf16: Annotated[bool, typer.Option(
        "--bf16", help="bfloat16 weights: ~3x faster than fp32 on CPUs with AMX/AVX512-BF16; p(unsafe) moves ~1e-3.")] = False,
    model_name: Annotated[Optional[str], typer.Option(help="Name reported in responses (default: the folder name).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve a moderator over HTTP: OpenAI-compatible POST /v1/moderations, GET /healthz."""
    import torch
    import uvicorn
    from transformers.utils import logging as hf_logging

    from safealign.config import ConfigError
    from safealign.moderation.model import Moderator
    from safealign.moderation.server import ServerConfig, create_app

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    # One core is left to the event loop and clients: torch's OpenMP threads wait on each other, and
    # when other work takes one of their cores, throughput fell 16-fold here (2 threads on 2 cores).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    threads = threads or max(1, cores - 1)
    config = ServerConfig(max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_request_bytes=max_request_bytes,
                          max_inputs=max_inputs, max_chars=max_chars, api_key=api_key or None,
                          model_name=model_name or _default_name(model), threads=threads,
                          forward_batch=forward_batch, bf16=bf16)
    try:
        config.validate()
    except ConfigError as exc:
        raise fail(str(exc)) from None
    torch.set_num_threads(threads)  # loading too: never more threads than asked for
    with user_errors():
        server_app = create_app(Moderator.load(model), config)
    err_console.print(f"serving {config.model_name} on http://{host}:{port}/v1/moderations "
                      f"(batch ≤ {max_batch}, wait {batch_wait_ms:g} ms, {threads} thread(s){', bf16' if bf16 else ''}, "
                      f"{'API key required' if config.api_key else 'no API key'})")
    uvicorn.run(server_app, host=host, port=port, access_log=access_log, log_level="info")


def _default_name(folder: Path) -> str:
    """The folder's name, or its run's name for the `RUN/model` folders that training writes."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "model" and folder.parent.name else folder.name
