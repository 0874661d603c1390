"""Sample answers from any causal-LM policy for a prompt file, in batches (left padding, KV cache)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from safealign.config import at_least_one
from safealign.data.records import Record, dialogue
from safealign.inference.sampling import SamplingSettings, encode_prompts, row_seed, sample
from safealign.inference.settings import PromptConditioning, validate_device


def generate_answers(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    settings: SamplingSettings,
    batch_size: int = 8,
    max_prompt_length: int = 512,
    condition: Callable[[Record], Record] | None = None,
    keys: Sequence[int] | None = None,
) -> Iterator[tuple[Record, str]]:
    """(record, answer) for every record, in order; `condition` rewrites what the policy reads (system message, attributes).

    Record i is sampled with `row_seed(settings.seed, keys[i])` (keys default to 0, 1, …): its
    answer is the same whatever the batch size, and two policies answering the same prompts
    draw from the same noise. A caller that answers a subset passes the records' own indices.
    """
    if keys is not None and len(keys) != len(records):
        raise ValueError(f"{len(keys)} keys for {len(records)} records")
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        shown = [condition(r) for r in chunk] if condition else chunk
        ids, mask = encode_prompts(tokenizer, [dialogue(r) for r in shown], max_prompt_length)
        seeds = [row_seed(settings.seed, keys[i] if keys is not None else i) for i in range(start, start + len(chunk))]
        with torch.no_grad():
            rollout = sample(model, tokenizer, ids.to(device), mask.to(device), settings, seeds)
        yield from zip(chunk, rollout.responses)


def load_generator(name_or_path: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """A causal LM on `device` (`auto`: the GPU when there is one) and its tokenizer, for batched left-padded generation."""
    from safealign.models.loading import load_causal_lm, resolve_device
    from safealign.models.score import load_score_tokenizer

    place = resolve_device(device)
    tokenizer = load_score_tokenizer(name_or_path)
    model = load_causal_lm(name_or_path, dtype=dtype).to(place)
    return model, tokenizer


@dataclass(kw_only=True)
class GenerateConfig(SamplingSettings, PromptConditioning):
    """`safealign generate`: answers from a policy for every prompt, as JSON Lines (sampling fields from `SamplingSettings`)."""

    model: str
    """The policy: an offline alias, a folder or a hub id."""
    prompts: list[str]
    """Records with prompts: PATH_OR_NAME[@REV][#SPLIT][:PROPORTION]; one entry per flag."""
    out: str = "runs/generate/answers.jsonl"
    """JSON Lines of {prompt, category, response, origin}."""
    format: str | None = None
    """Source format of the prompts (detected when not given)."""
    batch_size: int = 8
    """Prompts per generate call."""
    limit: int | None = None
    """Only the first N prompts."""
    threads: int | None = None
    """torch CPU threads (default: torch's own choice)."""
    device: str = "auto"
    """auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        """Check settings once, early."""
        self.validate_sampling()
        self.validate_conditioning()
        at_least_one(self, "batch_size", "limit", "threads")
        validate_device(self.device)


def run_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Sample and write the answers; returns {answers, seconds, out}."""
    import json
    import time
    from pathlib import Path

    from accelerate.utils import set_seed

    from safealign.data.load import load

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    records = load(cfg.prompts, cfg.format).records[: cfg.limit]
    policy, tokenizer = load_generator(cfg.model, device=cfg.device)
    set_seed(cfg.seed)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for record, answer in generate_answers(policy, tokenizer, records, cfg.sampling(), cfg.batch_size,
                                                 condition=cfg.conditioning()):
            row = {"prompt": record.prompt, "category": getattr(record, "category", None), "response": answer, "origin": record.origin}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return {"answers": n, "seconds": time.perf_counter() - started, "out": str(out)}
