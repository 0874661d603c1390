"""`SamplingSettings`: how answers are sampled, with one set of defaults (no torch import here, so the CLI starts fast)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal


@dataclass
class SamplingSettings:
    """How answers are sampled: one set of defaults for every command that samples.

    generate, eval safety, eval arena, eval length, the guard and PPO all read these fields
    and these defaults: the model's own distribution (temperature 1, no truncation), seeded.
    Configs that sample extend this class (`SafetyEvalConfig`, `PPOConfig`), so the same
    names work in YAML files and as `--field value` flags.
    """

    max_new_tokens: int = 128
    """Tokens per answer at most."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy. PPO needs it above 0."""
    top_p: float = 1.0
    """Nucleus sampling; 1 is off. PPO needs 1."""
    top_k: int = 0
    """Top-k sampling; 0 is off (generate's own default of 50 would truncate the distribution). PPO needs 0."""
    repetition_penalty: float = 1.0
    """1 is none. PPO needs 1."""
    min_new_tokens: int = 0
    """Tokens per answer at least (eos is suppressed before that)."""
    seed: int = 0
    """Seed set once before sampling."""

    def validate_sampling(self) -> None:
        """Values that no sampler accepts, named by field (configs call it from their `validate`)."""
        from safealign.config import ConfigError

        if self.temperature < 0:
            raise ConfigError(f"temperature: must not be negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k: must not be negative, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty: must be above 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"min_new_tokens: must be in [0, max_new_tokens = {self.max_new_tokens}], got {self.min_new_tokens}")

    def sampling(self) -> SamplingSettings:
        """These settings alone, from a config class that extends them."""
        return SamplingSettings(**{f.name: getattr(self, f.name) for f in fields(SamplingSettings)})


@dataclass(kw_only=True)
class PromptConditioning:
    """What the policy is asked for besides the prompt: a system message and SteerLM attribute values.

    Generation commands extend this class; the conditioning changes what the policy reads,
    never what the judges score (they see the record's own conversation).
    """

    system: str | None = None
    """A system message for every prompt (TEXT, or a FILE that holds it), in place of the records' own."""
    attributes: str | None = None
    """SteerLM attribute values to ask for, e.g. "helpfulness:4,verbosity:1,harmlessness:4" (0-4 each)."""
    attributes_style: Literal["system", "nemo"] = "system"
    """How the attribute values are rendered: a system line, or NeMo-Aligner's <extra_id_2> line after the prompt (as the policy was trained)."""

    def validate_conditioning(self) -> None:
        """Parse the attribute values once, early (a ConfigError names the field)."""
        from safealign.config import ConfigError
        from safealign.data.errors import DataError
        from safealign.data.steer import parse_attributes

        if self.attributes is not None:
            try:
                parse_attributes(self.attributes)
            except DataError as exc:
                raise ConfigError(str(exc)) from None

    def conditioning(self) -> Callable[[Any], Any] | None:
        """record → the record as the policy should read it, or None when nothing is asked for."""
        from safealign.data.steer import conditioned, parse_attributes, with_system

        if self.system is None and self.attributes is None:
            return None
        system = self.system
        if system is not None and "\n" not in system and len(system) < 4096 and Path(system).is_file():
            system = Path(system).read_text(encoding="utf-8").strip()
        values = parse_attributes(self.attributes) if self.attributes is not None else None

        def apply(record: Any) -> Any:
            record = with_system(record, system)
            return conditioned(record, values, self.attributes_style) if values else record

        return apply


def validate_device(name: str) -> None:
    """A device this machine has (auto, cpu, cuda, cuda:N, mps), or a ConfigError that names the `device` field."""
    from safealign.config import ConfigError
    from safealign.models.loading import DeviceError, resolve_device

    try:
        resolve_device(name)
    except DeviceError as exc:
        raise ConfigError(str(exc)) from None


DEFAULT_SAMPLING = SamplingSettings()
"""The defaults, for CLI options that mirror the fields."""
