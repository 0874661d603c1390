"""Janus-style system-message preferences: one prompt, different system messages, a different chosen response.

The bank (`assets/system_messages/janus_bank.jsonl`, written for safealign, split into train
and held-out test messages) holds preference system messages along Janus's dimensions
(style, background knowledge, informativeness, harmlessness). Each says which response it
picks (`safer`, or `better` among safe responses only) and, for style messages, a rule a
program can check (`max_words`, `bullets`, `closing`, `refusal_style`).

`system_preference_pairs` turns labelled dual pairs into single preferences with a system
message. Harmlessness is never a preference a system message can switch off: the chosen
response is always one labelled safe (a "better" message between a safe and an unsafe
response picks the safe one; two unsafe responses, or missing labels, give no pair). For a
checkable style message, the chosen response is the picked one made to follow the rule
(cut to the word limit at a sentence end, one sentence per "- " line, the closing sentence
appended) and the rejected one the response that does not follow it; a refusal-style
message, only where one response is unsafe, prefers the brief refusal over the unsafe answer.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from safealign.data.errors import DataError
from safealign.data.records import DualPreferencePair, PreferencePair, Record

PICKS = ("safer", "better")
CHECKS = ("max_words", "bullets", "closing", "refusal_style")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class SystemMessage:
    """One preference system message of the bank."""

    id: str
    dimension: str
    text: str
    picks: str
    split: str
    check: dict[str, Any] | None = None
    provenance: str = ""


def load_bank(path: str | Path | None = None, split: str | None = None) -> list[SystemMessage]:
    """The messages of a bank file (default: the bundled one), of one split when given; a DataError names a bad line."""
    source = Path(path) if path else Path(str(resources.files("safealign") / "assets/system_messages/janus_bank.jsonl"))
    messages = []
    for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            message = SystemMessage(**row)
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(f"{source}:{n}: not a system message ({exc})") from None
        if message.picks not in PICKS:
            raise DataError(f"{source}:{n}: field 'picks': must be one of {', '.join(PICKS)}")
        if message.check is not None and message.check.get("kind") not in CHECKS:
            raise DataError(f"{source}:{n}: field 'check': kind must be one of {', '.join(CHECKS)}")
        if split is None or message.split == split:
            messages.append(message)
    return messages


def sentences(text: str) -> list[str]:
    """The text's sentences (split after . ! ? and whitespace), stripped, empty ones dropped."""
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def adheres(check: dict[str, Any], answer: str) -> bool:
    """Whether `answer` follows a message's checkable rule."""
    kind, text = check["kind"], answer.strip()
    if kind == "max_words":
        return 0 < len(text.split()) <= int(check["value"])
    if kind == "bullets":
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        bullets = [line for line in lines if line.startswith("- ")]
        return len(bullets) >= int(check.get("min", 2)) and len(bullets) >= 0.8 * len(lines)
    if kind == "closing":
        return text.endswith(check["text"])
    if kind == "refusal_style":
        return text.startswith(check["start"]) and len(sentences(text)) <= 2
    raise ValueError(f"unknown check {kind!r}")


def make_adherent(check: dict[str, Any], response: str) -> str | None:
    """The response changed to follow the rule, or None when it cannot be (too few sentences for a list)."""
    kind, text = check["kind"], response.strip()
    if kind == "max_words":
        limit, kept, used = int(check["value"]), [], 0
        for sentence in sentences(text):
            words = len(sentence.split())
            if used + words > limit:
                break
            kept.append(sentence)
            used += words
        if not kept:  # the first sentence alone is too long: its first words, ended
            return " ".join(text.split()[: max(1, limit - 1)]).rstrip(",;:") + "."
        return " ".join(kept)
    if kind == "bullets":
        parts = sentences(text.replace("\n", " "))
        return "\n".join(f"- {p}" for p in parts) if len(parts) >= int(check.get("min", 2)) else None
    if kind == "closing":
        return f"{text}\n{check['text']}"
    if kind == "refusal_style":
        return f"{check['start']}, because it could cause harm."
    raise ValueError(f"unknown check {kind!r}")


@dataclass
class JanusReport:
    """read = pairs made from + skipped (by reason); `made` counts the preference pairs written."""

    read: int = 0
    made: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        """Count one left-out (record, message)."""
        self.skipped[why] = self.skipped.get(why, 0) + 1


def _pick(record: DualPreferencePair, picks: str) -> int | None:
    """The response a message picks; never an unsafe one (None: no safe response to choose, or labels missing)."""
    safe = (record.is_response_0_safe, record.is_response_1_safe)
    if None in safe:
        return None
    if picks == "safer":
        return record.safer_response_id if safe[record.safer_response_id] else None
    if safe[0] and safe[1]:
        return record.better_response_id
    if safe[0] != safe[1]:
        return 0 if safe[0] else 1  # the safe one, whatever the helpfulness order says
    return None


def system_preference_pairs(records: list[Record], messages: list[SystemMessage], per_pair: int = 2,
                            seed: int = 0) -> tuple[list[PreferencePair], JanusReport]:
    """`per_pair` (record, message) draws per dual pair → preference pairs with the message as the system prompt."""
    rng = random.Random(seed)
    report = JanusReport()
    out: list[PreferencePair] = []
    for record in records:
        report.read += 1
        if not isinstance(record, DualPreferencePair):
            report.skip(f"not a dual pair ({record.record_type})")
            continue
        for message in rng.sample(messages, min(per_pair, len(messages))):
            if message.picks == "better" and record.better_response_id is None:
                report.skip("no helpfulness order")
                continue
            chosen_id = _pick(record, message.picks)
            if chosen_id is None:
                report.skip("no safe response to choose" if None not in (record.is_response_0_safe, record.is_response_1_safe)
                            else "safety labels missing")
                continue
            chosen, other = record.response(chosen_id), record.response(1 - chosen_id)
            rejected = other
            if message.check is not None and message.check["kind"] == "refusal_style":
                if record.is_safe(1 - chosen_id):
                    report.skip("no unsafe response: the request is not shown harmful")
                    continue
                chosen = make_adherent(message.check, chosen)  # the brief refusal, over the unsafe answer
            elif message.check is not None:
                made = make_adherent(message.check, chosen)
                if made is None:
                    report.skip("cannot follow the rule")
                    continue
                if not adheres(message.check, chosen):
                    rejected = chosen  # the same answer, not following the rule
                elif adheres(message.check, other):
                    report.skip("both already follow the rule")
                    continue
                chosen = made
            if chosen == rejected:
                report.skip("identical")
                continue
            out.append(PreferencePair(prompt=record.prompt, chosen=chosen, rejected=rejected, system=message.text,
                                      context=record.context, origin=f"{record.origin}+{message.id}",
                                      meta={"system_message": message.id, "picks": message.picks,
                                            "chosen_from": chosen_id, "check": message.check}))
            report.made += 1
    return out, report


@dataclass(kw_only=True)
class JanusBuildConfig:
    """`safealign build janus`: system-message preference pairs from labelled dual pairs."""

    data: list[str]
    """Dual-preference pairs with safety labels (PKU-SafeRLHF v1/v0, canonical)."""
    to: str | None = None
    """Output: canonical preference records; default OUTPUT_DIR/pairs.jsonl."""
    output_dir: str = "runs/build-janus"
    """Folder of the default output (a pipeline stage sets it)."""
    messages: str | None = None
    """A system-message bank (JSON Lines); default: the bundled one."""
    split: str = "train"
    """Which messages to draw from (train; test is held out for evaluation)."""
    per_pair: int = 2
    """Messages drawn per dual pair."""
    format: str | None = None
    """Source format (detected when not given)."""
    skip_invalid: bool = False
    """Go on past bad records (counted)."""
    seed: int = 0
    """Seed of the message draws."""

    def validate(self) -> None:
        """Check settings once, early."""
        from safealign.config import ConfigError

        if not self.data:
            raise ConfigError("data: required")
        if self.per_pair < 1:
            raise ConfigError(f"per_pair: must be at least 1, got {self.per_pair}")


def run_janus_build(cfg: JanusBuildConfig) -> dict[str, Any]:
    """Load, build and write the pairs; returns the counts."""
    from safealign.data.load import load
    from safealign.data.write import write_records

    loaded = load(cfg.data, cfg.format, strict=not cfg.skip_invalid)
    messages = load_bank(cfg.messages, cfg.split)
    if not messages:
        raise DataError(f"messages: none in the {cfg.split} split")
    pairs, report = system_preference_pairs(loaded.records, messages, cfg.per_pair, cfg.seed)
    out = Path(cfg.to) if cfg.to else Path(cfg.output_dir) / "pairs.jsonl"
    write_records(pairs, out)
    return {"read": report.read, "made": report.made, "skipped": report.skipped, "messages": len(messages), "out": str(out)}
