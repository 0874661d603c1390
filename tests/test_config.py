"""Config dataclasses: YAML, CLI overrides, types and errors that name the field."""

from __future__ import annotations

import pytest

from safealign.config import ConfigError, build_config, parse_overrides
from safealign.train.score import ScoreTrainConfig


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: tiny\ndata: [a.jsonl, b.jsonl:0.5]\nlearning_rate: 1e-4\nlora:\n  r: 4\n")
    cfg = build_config(ScoreTrainConfig, path, ["--learning-rate=3e-4", "--lora.alpha", "8", "--max_steps", "7", "--group_by_length"])
    assert cfg.model == "tiny" and cfg.data == ["a.jsonl", "b.jsonl:0.5"]
    assert cfg.learning_rate == 3e-4 and cfg.max_steps == 7 and cfg.group_by_length is True
    assert (cfg.lora.r, cfg.lora.alpha) == (4, 8)
    single = build_config(ScoreTrainConfig, None, ["--model", "m", "--data", "x.jsonl"])
    assert single.data == ["x.jsonl"] and single.lora is None
    twice = build_config(ScoreTrainConfig, path, ["--data", "x.jsonl", "--data", "y.jsonl:0.5"])
    assert twice.data == ["x.jsonl", "y.jsonl:0.5"]  # a repeated field collects a list, replacing the file's


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--model", "m", "--data", "x", "--learning_rat", "1"], "learning_rat: unknown field (did you mean learning_rate?)"),
        (["--model", "m", "--data", "x", "--max_steps", "ten"], "max_steps: expected an integer, got 'ten'"),
        (["--model", "m", "--data", "x", "--mixed_precision", "fp8"], "mixed_precision: must be one of no, bf16, fp16"),
        (["--data", "x"], "model: required"),
        (["--model", "m", "--data", "x", "--per_device_batch_size", "0"], "per_device_batch_size: must be at least 1"),
        (["--model", "m", "--data", "x", "--lora.rank", "4"], "lora.rank: unknown field"),
    ],
)
def test_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(ScoreTrainConfig, None, overrides)
    assert message in str(err.value)


def test_override_syntax():
    assert parse_overrides(["--a", "1", "--b=x", "--flag", "--c", "[1, 2]"]) == [("a", 1), ("b", "x"), ("flag", True), ("c", [1, 2])]
    with pytest.raises(ConfigError, match="overrides look like --field value"):
        parse_overrides(["stray"])
    with pytest.raises(ConfigError, match="no such file"):
        build_config(ScoreTrainConfig, "/nonexistent.yaml")


def test_shipped_configs_parse(data_dir):
    from pathlib import Path

    from safealign.train.ppo import PPOConfig

    from safealign.moderation.train import ModerationConfig

    import yaml

    # pipelines (a top-level `stages`) are checked in test_pipeline.py
    configs = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml") if "stages" not in yaml.safe_load(p.read_text()))
    assert len(configs) >= 5
    for path in configs:
        cls = PPOConfig if path.name.startswith("ppo") else ModerationConfig if path.name.startswith("moderation") else ScoreTrainConfig
        cfg = build_config(cls, path)
        assert cfg.output_dir.startswith("runs/"), path


def test_every_command_that_samples_has_the_one_set_of_sampling_defaults():
    from dataclasses import fields

    from safealign.evaluate.arena import ArenaConfig
    from safealign.evaluate.length import LengthConfig
    from safealign.evaluate.safety import SafetyEvalConfig
    from safealign.inference.generate import GenerateConfig
    from safealign.inference.settings import SamplingSettings
    from safealign.moderation.guard import GuardConfig
    from safealign.train.ppo import PPOConfig

    defaults = SamplingSettings()
    required = {"policy": "p", "moderator": "m", "prompts": ["x"], "model": "m", "reward": "r", "cost": "c", "data": ["d"]}
    for cls in (GenerateConfig, GuardConfig, SafetyEvalConfig, ArenaConfig, LengthConfig):
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in required.items() if k in names})
        assert config.sampling() == defaults, cls.__name__
    ppo = PPOConfig(actor="a", reward_model="r").sampling()
    assert {f.name: getattr(ppo, f.name) for f in fields(SamplingSettings) if f.name != "seed"} == \
        {f.name: getattr(defaults, f.name) for f in fields(SamplingSettings) if f.name != "seed"}
