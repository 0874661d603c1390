"""`safealign guard --policy DIR --moderator DIR --prompts PATH`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from safealign.cli.common import console, user_errors
from safealign.inference.settings import DEFAULT_SAMPLING


def guard(
    policy: Annotated[str, typer.Option("--policy", help="A policy: alias, folder or hub id.")],
    moderator: Annotated[Path, typer.Option("--moderator", help="A moderation folder.")],
    prompts: Annotated[list[str], typer.Option("--prompts", help="Records with prompts; repeat for more.")],
    out: Annotated[Path, typer.Option("--out", help="JSON Lines: final answer and every round's verdict.")] = Path("runs/guard/answers.jsonl"),
    rounds: Annotated[int, typer.Option(help="Generations per prompt at most before the refusal.")] = 3,
    refusal: Annotated[str, typer.Option(help="The answer when every round was flagged.")] = "I'm sorry, but I can't help with that.",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer at most.")] = DEFAULT_SAMPLING.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy (resampling needs > 0).")] = DEFAULT_SAMPLING.temperature,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N prompts.")] = None,
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Source format (detected when not given).")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = DEFAULT_SAMPLING.seed,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda, cuda:N or mps.")] = "auto",
) -> None:
    """Generate, moderate and regenerate flagged answers; report flagged before and after."""
    from accelerate.utils import set_seed
    from transformers.utils import logging as hf_logging

    from safealign.data.load import load
    from safealign.data.records import dialogue
    from safealign.inference.generate import load_generator
    from safealign.moderation.guard import Guard
    from safealign.moderation.model import Moderator
    from safealign.inference.sampling import SamplingSettings

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with user_errors():
        records = load(prompts, format).records[:limit]
        model, tokenizer = load_generator(policy, device=device)
        judge = Moderator.load(moderator).to(next(model.parameters()).device)
    set_seed(seed)
    guarded = Guard(model, tokenizer, judge, rounds, refusal, SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature))(
        [dialogue(r) for r in records])
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for record, g in zip(records, guarded):
            f.write(json.dumps({"prompt": record.prompt, "origin": record.origin, "answer": g.answer, "refused": g.refused,
                                "rounds": [{"answer": a, "flagged": v.flagged, "unsafe_probability": v.unsafe_probability,
                                            "severity": v.severity} for a, v in g.rounds]}, ensure_ascii=False) + "\n")
    before = sum(g.rounds[0][1].flagged for g in guarded)
    after = sum(g.rounds[-1][1].flagged and not g.refused for g in guarded)
    refused = sum(g.refused for g in guarded)
    console.print(f"{len(guarded)} prompts: flagged before the guard {before}, after {after} "
                  f"({refused} answered with the refusal); wrote {out}")
