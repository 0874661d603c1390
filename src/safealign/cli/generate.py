"""`safealign generate --model DIR --prompts PATH`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from safealign.cli.common import console, user_errors
from safealign.inference.settings import DEFAULT_SAMPLING


def generate(
    model: Annotated[str, typer.Option("--model", help="A policy: an offline alias, a folder or a hub id.")],
    prompts: Annotated[list[str], typer.Option("--prompts", help="Records with prompts: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION]; repeat for more.")],
    out: Annotated[Path, typer.Option("--out", help="JSON Lines of {prompt, category, response, origin}.")] = Path("runs/generate/answers.jsonl"),
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer at most.")] = DEFAULT_SAMPLING.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = DEFAULT_SAMPLING.temperature,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = DEFAULT_SAMPLING.top_p,
    repetition_penalty: Annotated[float, typer.Option(help="1 = none.")] = DEFAULT_SAMPLING.repetition_penalty,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 8,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N prompts.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = DEFAULT_SAMPLING.seed,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda, cuda:N or mps.")] = "auto",
) -> None:
    """Sample answers from a policy for every prompt and write them as JSON Lines."""
    from transformers.utils import logging as hf_logging

    from safealign.data.load import load
    from safealign.inference.generate import generate_answers, load_generator
    from safealign.inference.sampling import SamplingSettings

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if threads:
        import torch

        torch.set_num_threads(threads)
    with user_errors():
        records = load(prompts, format).records[:limit]
        policy, tokenizer = load_generator(model, device=device)
    from accelerate.utils import set_seed

    set_seed(seed)
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for record, answer in generate_answers(policy, tokenizer, records, settings, batch_size):
            row = {"prompt": record.prompt, "category": getattr(record, "category", None), "response": answer, "origin": record.origin}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    console.print(f"wrote {n} answer(s) to {out} in {time.perf_counter() - started:.1f} s")
