"""Guard: generate, moderate, regenerate while flagged (up to N rounds), else refuse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from safealign.moderation.model import Moderator, Verdict
from safealign.inference.sampling import SamplingSettings, encode_prompts, sample

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
        for _ in range(self.max_rounds):
            answers = self._generate([dialogues[i] for i in pending])
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

    def _generate(self, dialogues: list[list[dict[str, str]]]) -> list[str]:
        device = next(self.policy.parameters()).device
        out: list[str] = []
        for start in range(0, len(dialogues), self.batch_size):
            ids, mask = encode_prompts(self.tokenizer, dialogues[start : start + self.batch_size], 512)
            out.extend(sample(self.policy, self.tokenizer, ids.to(device), mask.to(device), self.sampling).responses)
        return out
