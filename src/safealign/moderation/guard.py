"""Guard: generate, moderate, regenerate while flagged (up to N rounds), else refuse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safealign.config import ConfigError, at_least_one
from safealign.inference.sampling import SamplingSettings, encode_prompts, row_seed, sample
from safealign.inference.settings import validate_device
from safealign.moderation.model import Moderator, Verdict

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."


@dataclass
class Guarded:
    """The final answer for one prompt and the verdict of every round."""

    answer: str
    refused: bool
    rounds: list[tuple[str, Verdict]] = field(default_factory=list)


class Guard:
    """Wrap a policy with a moderator: flagged answers are resampled, up to `max_rounds` in all."""

    def __init__(self, policy: Any, tokenizer: Any, moderator: Moderator, max_rounds: int = 3,
                 refusal: str = DEFAULT_REFUSAL, sampling: SamplingSettings | None = None, batch_size: int = 8) -> None:
        if max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        self.policy, self.tokenizer, self.moderator = policy, tokenizer, moderator
        self.max_rounds, self.refusal, self.batch_size = max_rounds, refusal, batch_size
        self.sampling = sampling or SamplingSettings()

    def __call__(self, dialogues: list[list[dict[str, str]]]) -> list[Guarded]:
        """Guarded answers, in order. Only prompts still flagged are regenerated in later rounds."""
        results = [Guarded(answer="", refused=False) for _ in dialogues]
        pending = list(range(len(dialogues)))
        for round_ in range(self.max_rounds):
            answers = self._generate([dialogues[i] for i in pending], [(i, round_) if round_ else (i,) for i in pending])
            verdicts = self.moderator.predict([dialogues[i] for i in pending], answers)
            still = []
            for i, answer, verdict in zip(pending, answers, verdicts):
                results[i].rounds.append((answer, verdict))
                results[i].answer = answer
                if verdict.flagged:
                    still.append(i)
            pending = still
            if not pending:
                break
        for i in pending:  # flagged in every round
            results[i].answer, results[i].refused = self.refusal, True
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


@dataclass(kw_only=True)
class GuardConfig(SamplingSettings):
    """`safealign guard`: a policy behind a moderator, over a prompt set (sampling fields from `SamplingSettings`)."""

    policy: str
    """The policy: alias, folder or hub id."""
    moderator: str
    """A moderation folder (the judge)."""
    prompts: list[str]
    """Records with prompts; one entry per flag."""
    out: str = "runs/guard/answers.jsonl"
    """JSON Lines: the final answer and every round's verdict."""
    rounds: int = 3
    """Generations per prompt at most before the refusal (resampling needs temperature > 0)."""
    refusal: str = DEFAULT_REFUSAL
    """The answer when every round was flagged."""
    format: str | None = None
    """Source format of the prompts (detected when not given)."""
    limit: int | None = None
    """Only the first N prompts."""
    batch_size: int = 8
    """Prompts per generate call."""
    device: str = "auto"
    """auto (the GPU when there is one), cpu, cuda, cuda:N or mps."""

    def validate(self) -> None:
        """Check settings once, early."""
        self.validate_sampling()
        at_least_one(self, "rounds", "limit", "batch_size")
        validate_device(self.device)
        if self.rounds > 1 and self.temperature == 0:
            raise ConfigError("temperature: 0 (greedy) gives the same answer every round; set it above 0 or rounds: 1")


def run_guard(cfg: GuardConfig) -> dict[str, Any]:
    """Guard every prompt, write one row each; returns {prompts, flagged_before, flagged_after, refused, out}."""
    import json
    from pathlib import Path

    from accelerate.utils import set_seed

    from safealign.data.load import load
    from safealign.data.records import dialogue
    from safealign.inference.generate import load_generator

    records = load(cfg.prompts, cfg.format).records[: cfg.limit]
    model, tokenizer = load_generator(cfg.policy, device=cfg.device)
    judge = Moderator.load(cfg.moderator).to(next(model.parameters()).device)
    set_seed(cfg.seed)
    guarded = Guard(model, tokenizer, judge, cfg.rounds, cfg.refusal, cfg.sampling(), cfg.batch_size)([dialogue(r) for r in records])
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for record, g in zip(records, guarded):
            rounds = [{"answer": a, "flagged": v.flagged, "unsafe_probability": v.unsafe_probability, "severity": v.severity}
                      for a, v in g.rounds]
            row = {"prompt": record.prompt, "origin": record.origin, "answer": g.answer, "refused": g.refused, "rounds": rounds}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"prompts": len(guarded), "flagged_before": sum(g.rounds[0][1].flagged for g in guarded),
            "flagged_after": sum(g.rounds[-1][1].flagged and not g.refused for g in guarded),
            "refused": sum(g.refused for g in guarded), "out": str(out)}
