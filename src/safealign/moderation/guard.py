"""A multi-level guard, as in Safe RLHF-V's guardrail (Beaver-Guard-V): the prompt first, then the answer.

1. A prompt moderator (optional) judges the request; a flagged request gets the prompt
   refusal and no generation.
2. The policy answers; the response moderator judges the answer; a flagged answer is
   sampled again (a new seed per round), up to `max_rounds` answers in all (default 5).
3. Flagged in every round: the refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safealign.config import ConfigError, at_least_one
from safealign.inference.sampling import SamplingSettings, encode_prompts, row_seed, sample
from safealign.inference.settings import PromptConditioning, validate_device
from safealign.moderation.model import Moderator, Verdict

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."


@dataclass
class Guarded:
    """The final answer for one prompt, the prompt's verdict and the verdict of every round."""

    answer: str
    refused: bool  # answered with a refusal (the prompt was flagged, or every answer was)
    rounds: list[tuple[str, Verdict]] = field(default_factory=list)
    prompt_verdict: Verdict | None = None  # None without a prompt moderator

    @property
    def prompt_refused(self) -> bool:
        """Refused at the prompt level, before any generation."""
        return self.prompt_verdict is not None and self.prompt_verdict.flagged


class Guard:
    """Wrap a policy with a prompt moderator (optional) and a response moderator."""

    def __init__(self, policy: Any, tokenizer: Any, moderator: Moderator, max_rounds: int = 5,
                 refusal: str = DEFAULT_REFUSAL, sampling: SamplingSettings | None = None, batch_size: int = 8,
                 prompt_moderator: Moderator | None = None, prompt_refusal: str | None = None) -> None:
        if max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        self.policy, self.tokenizer, self.moderator = policy, tokenizer, moderator
        self.max_rounds, self.refusal, self.batch_size = max_rounds, refusal, batch_size
        self.sampling = sampling or SamplingSettings()
        self.prompt_moderator = prompt_moderator
        self.prompt_refusal = refusal if prompt_refusal is None else prompt_refusal

    def __call__(self, dialogues: list[list[dict[str, str]]], answer_refused: bool = False) -> list[Guarded]:
        """Guarded answers, in order; only prompts still flagged are regenerated in later rounds.

        `answer_refused`: answer the prompts the prompt moderator refuses too (their answers are
        kept in `rounds`, the final answer is still the refusal), so one run measures the output
        guard alone and both levels on the same answers.
        """
        results = [Guarded(answer="", refused=False) for _ in dialogues]
        pending = list(range(len(dialogues)))
        if self.prompt_moderator is not None:
            for result, verdict in zip(results, self.prompt_moderator.predict_prompts(dialogues)):
                result.prompt_verdict = verdict
            if not answer_refused:
                pending = [i for i in pending if not results[i].prompt_refused]
        for round_ in range(self.max_rounds):
            if not pending:
                break
            answers = self._generate([dialogues[i] for i in pending], [(i, round_) if round_ else (i,) for i in pending])
            verdicts = self.moderator.predict([dialogues[i] for i in pending], answers)
            still = []
            for i, answer, verdict in zip(pending, answers, verdicts):
                results[i].rounds.append((answer, verdict))
                results[i].answer = answer
                if verdict.flagged:
                    still.append(i)
            pending = still
        for i in pending:  # flagged in every round
            results[i].answer, results[i].refused = self.refusal, True
        for result in results:
            if result.prompt_refused:
                result.answer, result.refused = self.prompt_refusal, True
        return results

    def _generate(self, dialogues: list[list[dict[str, str]]], keys: list[tuple[int, ...]]) -> list[str]:
        """One answer per dialogue; prompt i's round r is drawn with row_seed(seed, i, r) (round 0: as `generate`)."""
        device = next(self.policy.parameters()).device
        out: list[str] = []
        for start in range(0, len(dialogues), self.batch_size):
            ids, mask = encode_prompts(self.tokenizer, dialogues[start : start + self.batch_size], 512)
            seeds = [row_seed(self.sampling.seed, *key) for key in keys[start : start + self.batch_size]]
            out.extend(sample(self.policy, self.tokenizer, ids.to(device), mask.to(device), self.sampling, seeds).responses)
        return out


def guard_summary(dialogues: list[list[dict[str, str]]], guarded: list[Guarded], judge: Moderator) -> dict[str, Any]:
    """Unsafe and refusal rates without the guard, with the output guard only, and with both levels.

    `guarded` must come from `Guard(...)(dialogues, answer_refused=True)`, so every prompt has
    answers. A refusal counts as safe. Under the guard's own moderator as `judge`, an answer
    the output guard lets through is never flagged; an independent judge measures more.
    """
    n = len(guarded)
    first = [g.rounds[0][0] for g in guarded]
    output_only = [None if g.rounds[-1][1].flagged else g.rounds[-1][0] for g in guarded]  # None: refused
    both = [None if g.prompt_refused else a for g, a in zip(guarded, output_only)]
    # (prompt, answer) pairs to judge, each once: a verdict depends on the dialogue too
    unique = sorted({(i, a) for answers in (first, output_only) for i, a in enumerate(answers) if a is not None})
    verdicts = dict(zip(unique, judge.predict([dialogues[i] for i, _ in unique], [a for _, a in unique])))

    def unsafe(answers: list[str | None]) -> float:
        return sum(a is not None and verdicts[(i, a)].flagged for i, a in enumerate(answers)) / n if n else 0.0

    def refused(answers: list[str | None]) -> float:
        return sum(a is None for a in answers) / n if n else 0.0

    out = {"prompts": n,
           "unsafe_rate": {"no_guard": unsafe(first), "output_guard": unsafe(output_only)},
           "refusal_rate": {"no_guard": 0.0, "output_guard": refused(output_only)},
           "mean_rounds": sum(len(g.rounds) for g in guarded) / n if n else 0.0}
    if any(g.prompt_verdict is not None for g in guarded):
        out["unsafe_rate"]["both"] = unsafe(both)
        out["refusal_rate"]["both"] = refused(both)
        out["prompt_flagged"] = sum(g.prompt_refused for g in guarded) / n if n else 0.0
    return out


@dataclass(kw_only=True)
class GuardConfig(SamplingSettings, PromptConditioning):
    """`safealign guard`: a policy behind a prompt moderator and a response moderator (sampling fields from `SamplingSettings`)."""

    policy: str
    """The policy: alias, folder or hub id."""
    moderator: str
    """The response moderator: a moderation folder."""
    prompts: list[str]
    """Records with prompts (e.g. BeaverTails-Evaluation); one entry per flag."""
    prompt_moderator: str | None = None
    """A prompt moderator (trained on labelled prompts): flagged requests are refused before any generation."""
    safe_prompts: list[str] = field(default_factory=list)
    """Prompts labelled safe (held out from the prompt moderator's training): the over-refusal each way is measured on them."""
    judge: str | None = None
    """A moderator that scores the final answers (default: the response moderator, under which an answer the guard lets through is never flagged)."""
    output_dir: str = "runs/guard"
    """Folder (`--out`) for answers.jsonl (final answer, the prompt's verdict and every round's) and metrics.json."""
    rounds: int = 5
    """Answers per prompt at most before the refusal (Beaver-Guard-V: 5; resampling needs temperature > 0)."""
    refusal: str = DEFAULT_REFUSAL
    """The answer when every round was flagged."""
    prompt_refusal: str | None = None
    """The answer to a flagged request (default: `refusal`)."""
    format: str | None = None
    """Source format of the prompts (detected when not given)."""
    limit: int | None = None
    """Only the first N prompts (of `prompts` and of `safe_prompts` each)."""
    batch_size: int = 8
    """Prompts per generate call."""
    device: str = "auto"
    """auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        """Check settings once, early."""
        self.validate_sampling()
        self.validate_conditioning()
        at_least_one(self, "rounds", "limit", "batch_size")
        validate_device(self.device)
        if self.rounds > 1 and self.temperature == 0:
            raise ConfigError("temperature: 0 (greedy) gives the same answer every round; set it above 0 or rounds: 1")


def run_guard(cfg: GuardConfig) -> dict[str, Any]:
    """Guard every prompt (and every safe prompt), write answers.jsonl and metrics.json; returns the metrics."""
    import json
    from pathlib import Path

    from safealign.data.load import load
    from safealign.data.records import dialogue
    from safealign.inference.generate import load_generator

    model, tokenizer = load_generator(cfg.policy, device=cfg.device)
    device = next(model.parameters()).device
    moderator = Moderator.load(cfg.moderator).to(device)
    prompt_moderator = Moderator.load(cfg.prompt_moderator).to(device) if cfg.prompt_moderator else None
    judge = Moderator.load(cfg.judge).to(device) if cfg.judge else moderator
    guard = Guard(model, tokenizer, moderator, cfg.rounds, cfg.refusal, cfg.sampling(), cfg.batch_size,
                  prompt_moderator, cfg.prompt_refusal)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"rounds": cfg.rounds, "judge": cfg.judge or cfg.moderator,
                               "prompt_moderator": cfg.prompt_moderator}
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        for name, specs in (("prompts", cfg.prompts), ("safe_prompts", cfg.safe_prompts)):
            if not specs:
                continue
            records = load(specs, cfg.format).records[: cfg.limit]
            condition = cfg.conditioning() or (lambda r: r)
            dialogues = [dialogue(condition(r)) for r in records]  # the guard's moderators read what the policy read
            guarded = guard(dialogues, answer_refused=True)
            metrics[name] = guard_summary(dialogues, guarded, judge)
            for record, g in zip(records, guarded):
                rounds = [{"answer": a, "flagged": v.flagged, "unsafe_probability": v.unsafe_probability,
                           "severity": v.severity} for a, v in g.rounds]
                prompt = None if g.prompt_verdict is None else {"flagged": g.prompt_verdict.flagged,
                                                                "unsafe_probability": g.prompt_verdict.unsafe_probability}
                row = {"set": name, "prompt": record.prompt, "origin": record.origin, "answer": g.answer,
                       "refused": g.refused, "prompt_verdict": prompt, "rounds": rounds}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
