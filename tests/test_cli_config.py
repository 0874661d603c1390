"""One config system for every command: `--config FILE.yaml` plus `--field value` flags, and help from the dataclass."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import DATA, run_cli
from tiny import tiny_llama

from safealign.cli.common import command_overrides
from safealign.config import ConfigError, build_config, describe_type, field_docs
from safealign.evaluate.arena import ArenaConfig
from safealign.inference.generate import GenerateConfig
from safealign.moderation.server import ServeConfig

PROMPTS = str(DATA / "beavertails/evaluation_700.json")
# Every command whose settings are a config dataclass (the train commands are in test_train.py).
COMMANDS = [("generate",), ("guard",), ("moderate",), ("eval", "preference"), ("eval", "moderation"), ("eval", "arena"),
            ("eval", "length"), ("eval", "safety"), ("serve", "moderation"), ("train", "ppo-lag")]


def test_command_lines_become_overrides_with_short_flags_negations_and_aliases():
    path, overrides = command_overrides(ServeConfig, ["-c", "s.yaml", "--model", "m", "--no-access-log", "--no-bf16",
                                                      "--port=9000"], {})
    assert path == "s.yaml" and overrides == ["--model", "m", "--access_log", "false", "--bf16", "false", "--port=9000"]
    _, overrides = command_overrides(GenerateConfig, ["-f", "jsonl", "--out=x.jsonl", "--no-such"], {"out": "output"})
    # -f is --format; an alias is renamed with its value kept; --no-X of a field that is not a bool stays as typed
    assert overrides == ["--format", "jsonl", "--output=x.jsonl", "--no-such"]
    with pytest.raises(ConfigError, match="--config: expected a YAML file"):
        command_overrides(GenerateConfig, ["--config"], {})


def test_a_config_file_and_flags_fill_the_same_dataclass_and_flags_win(tmp_path):
    path = tmp_path / "arena.yaml"
    path.write_text(yaml.safe_dump({"reward": "r", "cost": "c", "prompts": ["p.jsonl"], "policy": ["a=A", "b=B"],
                                    "temperature": 0.0, "bootstrap": 10}))
    _, overrides = command_overrides(ArenaConfig, ["--bootstrap", "20", "--policy", "c=C", "--policy", "d=D", "--out", "o"],
                                     {"out": "output_dir"})
    cfg = build_config(ArenaConfig, path, overrides)
    assert (cfg.temperature, cfg.bootstrap, cfg.output_dir) == (0.0, 20, "o")
    assert cfg.policies() == {"c": "C", "d": "D"}  # a list on the command line replaces the file's list
    with pytest.raises(ConfigError, match="policy: the name 'a' is given twice"):
        build_config(ArenaConfig, path, ["--policy", "a=A", "--policy", "a=B"])
    with pytest.raises(ConfigError, match="arena.yaml: prompt: unknown field .did you mean prompts"):
        build_config(ArenaConfig, path, ["--prompt", "x"])
    with pytest.raises(ConfigError, match="config: reward: required field is missing"):
        build_config(ArenaConfig, None, ["--cost", "c", "--prompts", "p"])


def test_field_docs_and_types_come_from_the_dataclass_and_its_bases():
    docs = field_docs(GenerateConfig)
    assert docs["model"].startswith("The policy") and docs["temperature"].startswith("Softmax temperature")
    assert [describe_type(t) for t in (int, float, str, bool, list[str], int | None)] == \
        ["INT", "NUMBER", "TEXT", "BOOL", "TEXT...", "INT"]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_lists_its_fields_in_its_help(command):
    proc = run_cli(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert f"Usage: safealign {' '.join(command)} [--config FILE.yaml] [--field value ...]" in proc.stdout
    assert "[required]" in proc.stdout and "[default: " in proc.stdout
    assert run_cli(*command).stdout == proc.stdout  # no arguments: the same help


def test_bad_flags_name_the_field_and_exit_1_without_a_traceback(tmp_path):
    proc = run_cli("eval", "arena", "--reward", "r", "--cost", "c", "--prompts", "p", "--red", "a", "--blue", "b",
                   "--temprature", "0.5")
    assert proc.returncode == 1 and "temprature: unknown field (did you mean temperature?)" in proc.stderr, proc.stderr
    proc = run_cli("guard", "--policy", "p", "--moderator", "m", "--prompts", "x", "--temperature", "0")
    assert proc.returncode == 1 and "greedy) gives the same answer every round" in proc.stderr, proc.stderr
    proc = run_cli("serve", "moderation", "--model", "m", "--port", "0")
    assert proc.returncode == 1 and "port: must be in 1..65535" in proc.stderr
    proc = run_cli("generate", "--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 1 and "missing.yaml: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_generate_runs_from_a_config_file_with_a_flag_on_top(tmp_path):
    model = tiny_llama(tmp_path / "policy")
    out = tmp_path / "answers.jsonl"
    config = tmp_path / "generate.yaml"
    config.write_text(yaml.safe_dump({"model": str(model), "prompts": [PROMPTS], "limit": 2, "max_new_tokens": 4,
                                      "temperature": 0.0, "out": str(out)}))
    proc = run_cli("generate", "--config", str(config), "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 3 answer(s)" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3  # the flag won over the file's limit of 2
    again = run_cli("generate", "--config", str(config), "--limit", "3", "--out", str(tmp_path / "again.jsonl"))
    assert again.returncode == 0 and (tmp_path / "again.jsonl").read_text() == out.read_text()  # greedy: the same answers


def test_serve_defaults_that_depend_on_the_machine_and_the_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFEALIGN_API_KEY", "k")
    cfg = build_config(ServeConfig, None, ["--model", str(tmp_path / "run" / "model")])
    assert cfg.api_key == "k" and cfg.model_name == "run" and cfg.threads >= 1
    monkeypatch.delenv("SAFEALIGN_API_KEY")
    cfg = build_config(ServeConfig, None, ["--model", str(tmp_path / "mod"), "--threads", "2", "--model-name", "x"])
    assert (cfg.api_key, cfg.model_name, cfg.threads) == (None, "x", 2)
