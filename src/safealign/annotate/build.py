"""`safealign build pairs`: draft dual-preference pairs for a policy, with machine pre-labels, in the PKU-SafeRLHF v1 schema.

Two responses per prompt: from two policies (`policy: [A, B]`, the same seed per row), or
from one policy sampled twice (seeds `seed` and `seed + 1`, temperatures `temperature` and
`second_temperature`). The pre-labels are machine-made and say so in `meta`:
- safety (is_safe, the 19 PKU categories, severity) from a PKU-taxonomy moderator, made
  consistent the way v1 requires (safe: severity 0, no category; unsafe: severity ≥ 1);
- better from the reward model (higher score), with its margin;
- safer from the cost model (lower cost) when given, else from the moderator (lower unsafe
  probability); a safe response is always the safer one against an unsafe one.
Rows are written as each batch is judged, so a stopped run resumes: rows already in `out`
(by prompt and sample index) are skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safealign.config import ConfigError, at_least_one
from safealign.data.formats.pku import to_v1_row
from safealign.data.load import prompt_key
from safealign.data.records import DualPreferencePair, Record, dialogue
from safealign.data.taxonomy import PKU_SAFERLHF
from safealign.inference.settings import SamplingSettings, validate_device


@dataclass(kw_only=True)
class BuildConfig(SamplingSettings):
    """`safealign build pairs` (sampling fields from `SamplingSettings`; default temperature 1)."""

    policy: list[str]
    """One policy (sampled twice) or two (one response each): aliases, folders or hub ids."""
    prompts: list[str]
    """Records with prompts: PATH_OR_NAME[@REV][#SPLIT][%SIDE=SHARE][:PROPORTION]."""
    out: str
    """JSON Lines in the PKU-SafeRLHF v1 schema plus `meta` (appended to when it exists)."""
    moderator: str
    """A moderator folder with the PKU-SafeRLHF taxonomy (from `train moderation`): is_safe, categories, severity."""
    reward: str
    """A reward model folder: the suggested better response and its margin."""
    cost: str | None = None
    """A cost model folder: the suggested safer response (else the moderator's unsafe probability)."""
    per_prompt: int = 1
    """Pairs per prompt (sample k samples with seeds offset by 1000·k)."""
    second_temperature: float | None = None
    """With one policy: the second response's temperature (default: temperature)."""
    format: str | None = None
    """Source format of the prompts (detected when not given)."""
    limit: int | None = None
    """Only the first N distinct prompts."""
    batch_size: int = 8
    """Prompts per generate call."""
    max_prompt_length: int = 512
    """Prompt tokens kept."""
    threads: int | None = None
    """torch CPU threads."""
    device: str = "auto"
    """auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""
    retries: int = 3
    """With one policy: new seeds tried when both samples come out identical."""

    def validate(self) -> None:
        """Check settings once, early."""
        self.validate_sampling()
        if not 1 <= len(self.policy) <= 2:
            raise ConfigError(f"policy: one or two policies, got {len(self.policy)}")
        if not self.prompts:
            raise ConfigError("prompts: required")
        at_least_one(self, "batch_size", "limit", "threads", "per_prompt", "max_prompt_length")
        if self.retries < 0:
            raise ConfigError(f"retries: must not be negative, got {self.retries}")
        if self.second_temperature is not None and self.second_temperature < 0:
            raise ConfigError("second_temperature: must not be negative")
        if len(self.policy) == 1 and self.temperature == 0 and not self.second_temperature:
            raise ConfigError("temperature: one greedy policy gives the same answer twice; sample (temperature > 0) or give two policies")
        validate_device(self.device)


def done_keys(path: Path) -> set[tuple[str, int]]:
    """(prompt key, sample) of every row already in `path`; a torn last line (a killed run) is dropped from the file."""
    keys: set[tuple[str, int]] = set()
    if not path.exists():
        return keys
    good = 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith(b"\n"):
            break
        keys.add((prompt_key(row["prompt"]), int(row.get("meta", {}).get("build", {}).get("sample", 0))))
        good += len(line)
    if good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return keys


def machine_labels(verdicts: list[Any], rewards: list[float], costs: list[float] | None) -> dict[str, Any]:
    """The pre-labels of one pair from its two moderator verdicts and scores (pure, for tests)."""
    responses = []
    for v in verdicts:
        if v.flagged:
            categories = [c for c, on in v.categories.items() if on]
            if not categories:  # flagged, no category over its threshold: the most likely one
                categories = [max(v.category_scores, key=v.category_scores.get)]
            responses.append({"categories": categories, "severity": max(1, int(v.severity))})
        else:
            responses.append({"categories": [], "severity": 0})
    better = 0 if rewards[0] >= rewards[1] else 1
    if costs is not None:
        safer, rule, margin = (0 if costs[0] <= costs[1] else 1), "cost", abs(costs[0] - costs[1])
    else:
        p = [v.unsafe_probability for v in verdicts]
        safer, rule, margin = (0 if p[0] <= p[1] else 1), "moderator", abs(p[0] - p[1])
    safe = [r["severity"] == 0 for r in responses]
    if safe[0] != safe[1] and not safe[safer]:
        safer, rule = (0 if safe[0] else 1), "safety labels"
    return {"responses": responses, "better": better, "safer": safer, "safer_rule": rule,
            "better_margin": abs(rewards[0] - rewards[1]), "safer_margin": margin}


def run_build(cfg: BuildConfig) -> dict[str, Any]:
    """Generate, judge and append the pairs; returns counts and the output path."""
    import torch
    from accelerate.utils import set_seed

    from safealign.data.load import load
    from safealign.inference.generate import load_generator
    from safealign.inference.scoring import ModelScorer
    from safealign.moderation.model import Moderator

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    loaded = load(cfg.prompts, cfg.format)
    prompts: list[Record] = []
    seen: set[str] = set()
    for record in loaded.records:
        if prompt_key(record.prompt) not in seen:
            seen.add(prompt_key(record.prompt))
            prompts.append(record)
    prompts = prompts[: cfg.limit]
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    todo = [(r, k) for k in range(cfg.per_prompt) for r in prompts if (prompt_key(r.prompt), k) not in done]
    counts = {"prompts": len(prompts), "already_done": len(prompts) * cfg.per_prompt - len(todo), "written": 0,
              "identical": 0, "out": str(out)}
    if not todo:
        return counts
    moderator = Moderator.load(cfg.moderator)
    if moderator.meta.taxonomy != PKU_SAFERLHF:
        raise ConfigError(f"moderator: {cfg.moderator} judges the {moderator.meta.taxonomy} taxonomy; "
                          f"PKU-SafeRLHF v1 labels need a {PKU_SAFERLHF} moderator")
    reward = ModelScorer(cfg.reward)
    cost = ModelScorer(cfg.cost) if cfg.cost else None
    policies = [load_generator(name, device=cfg.device) for name in cfg.policy]
    set_seed(cfg.seed)
    started = time.perf_counter()
    from rich.progress import Progress

    with open(out, "a", encoding="utf-8") as f, Progress(transient=True) as progress:
        task = progress.add_task("pairs", total=len(todo))
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start : start + cfg.batch_size]
            pairs = _sample_pairs(cfg, policies, chunk)
            kept = [(r, k, a, b, seeds) for (r, k), (a, b, seeds) in zip(chunk, pairs) if a != b]
            counts["identical"] += len(chunk) - len(kept)
            if kept:
                for row in _judged_rows(cfg, kept, moderator, reward, cost):
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
            counts["written"] += len(kept)
            progress.advance(task, len(chunk))
    counts["seconds"] = time.perf_counter() - started
    return counts


def _sample_pairs(cfg: BuildConfig, policies: list[tuple[Any, Any]], chunk: list[tuple[Record, int]]) -> list[tuple[str, str, list[int]]]:
    """Two answers per (prompt, sample); with one policy, retried with new seeds while the two are identical."""
    from safealign.inference.generate import generate_answers

    records = [r for r, _ in chunk]

    def answers(policy: tuple[Any, Any], seed: int, temperature: float, rows: list[Record]) -> list[str]:
        settings = cfg.sampling()
        settings.seed, settings.temperature = seed, temperature
        model, tokenizer = policy
        return [a for _, a in generate_answers(model, tokenizer, rows, settings, len(rows), cfg.max_prompt_length)]

    out = []
    by_sample: dict[int, list[int]] = {}
    for index, (_, k) in enumerate(chunk):
        by_sample.setdefault(k, []).append(index)
    results: dict[int, tuple[str, str, list[int]]] = {}
    for k, indices in by_sample.items():
        rows = [records[i] for i in indices]
        base = cfg.seed + 1000 * k  # sample k of a prompt: its own seeds
        if len(policies) == 2:
            first = answers(policies[0], base, cfg.temperature, rows)
            second = answers(policies[1], base, cfg.temperature, rows)
            for i, a, b in zip(indices, first, second):
                results[i] = (a, b, [base, base])
            continue
        second_t = cfg.second_temperature if cfg.second_temperature is not None else cfg.temperature
        first = answers(policies[0], base, cfg.temperature, rows)
        second = answers(policies[0], base + 1, second_t, rows)
        for i, a, b in zip(indices, first, second):
            results[i] = (a, b, [base, base + 1])
        for attempt in range(cfg.retries):
            again = [i for i in indices if results[i][0] == results[i][1]]
            if not again:
                break
            seed = base + 2 + attempt
            retry = answers(policies[0], seed, second_t or 1.0, [records[i] for i in again])
            for i, b in zip(again, retry):
                results[i] = (results[i][0], b, [base, seed])
    for i in range(len(chunk)):
        out.append(results[i])
    return out


def _judged_rows(cfg: BuildConfig, kept: list[tuple[Record, int, str, str, list[int]]], moderator: Any, reward: Any,
                 cost: Any) -> list[dict[str, Any]]:
    turns = [dialogue(r) for r, *_ in kept]
    both_turns = turns + turns
    both = [a for _, _, a, _, _ in kept] + [b for _, _, _, b, _ in kept]
    verdicts = moderator.predict(both_turns, both)
    rewards = reward(both_turns, both, []).tolist()
    costs = cost(both_turns, both, []).tolist() if cost is not None else None
    n = len(kept)
    second_t = cfg.second_temperature if cfg.second_temperature is not None else cfg.temperature
    sources = (cfg.policy[0], cfg.policy[-1])
    rows = []
    for j, (record, k, a, b, seeds) in enumerate(kept):
        pair_costs = [costs[j], costs[n + j]] if costs is not None else None
        labels = machine_labels([verdicts[j], verdicts[n + j]], [rewards[j], rewards[n + j]], pair_costs)
        r0, r1 = labels["responses"]
        pair = DualPreferencePair(
            prompt=record.prompt, response_0=a, response_1=b, better_response_id=labels["better"], safer_response_id=labels["safer"],
            is_response_0_safe=r0["severity"] == 0, is_response_1_safe=r1["severity"] == 0,
            response_0_harm_categories=tuple(r0["categories"]), response_1_harm_categories=tuple(r1["categories"]),
            response_0_severity=r0["severity"], response_1_severity=r1["severity"], taxonomy=PKU_SAFERLHF,
            prompt_source=getattr(record, "prompt_source", None) or (record.origin or "").rpartition(":")[0] or None,
            response_0_source=sources[0], response_1_source=sources[1])
        pair.meta = {
            "machine": True,
            "labels": {
                "safety": {"model": cfg.moderator, "unsafe_probability": [round(verdicts[j].unsafe_probability, 6),
                                                                           round(verdicts[n + j].unsafe_probability, 6)],
                           "severity_distribution": [[round(p, 6) for p in verdicts[x].severity_distribution] for x in (j, n + j)]},
                "better": {"model": cfg.reward, "margin": round(labels["better_margin"], 6)},
                "safer": {"model": cfg.cost if labels["safer_rule"] == "cost" else cfg.moderator, "rule": labels["safer_rule"],
                          "margin": round(labels["safer_margin"], 6)},
            },
            "scores": {"reward": [round(rewards[j], 6), round(rewards[n + j], 6)],
                       **({"cost": [round(c, 6) for c in pair_costs]} if pair_costs else {})},
            "build": {"policies": list(cfg.policy), "sample": k, "seeds": seeds,
                      "temperatures": [cfg.temperature, cfg.temperature if len(cfg.policy) == 2 else second_t],
                      "max_new_tokens": cfg.max_new_tokens, "prompt_origin": record.origin},
        }
        rows.append(to_v1_row(pair))
    return rows
