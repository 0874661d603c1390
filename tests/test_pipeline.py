"""`safealign run`: a whole tiny pipeline, skipping finished stages on re-run, and the report."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import DATA, run_cli
from tiny import tiny_bert, tiny_llama

from safealign.config import ConfigError
from safealign.pipeline import load_pipeline

V1 = str(DATA / "pku_saferlhf/v1_test_sample.jsonl")
PROMPTS = str(DATA / "beavertails/evaluation_700.json")


def pipeline_file(tmp_path, policy, encoder):
    small = {"max_steps": 2, "per_device_batch_size": 4, "max_length": 64, "num_threads": 1, "save_every": 0, "eval_every": 0}
    stages = [
        {"name": "reward", "kind": "train-reward", "with": {"model": str(policy), "data": [V1], **small}},
        {"name": "cost", "kind": "train-cost", "with": {"model": str(policy), "data": [V1], **small}},
        {"name": "moderation", "kind": "train-moderation", "with": {"model": str(encoder), "data": [V1], **small}},
        {"name": "safety-before", "kind": "eval-safety",
         "with": {"policy": str(policy), "moderator": "@moderation", "prompts": [PROMPTS], "per_category": 1, "max_new_tokens": 4}},
        {"name": "policy", "kind": "ppo-lag",
         "with": {"actor": str(policy), "reward_model": "@reward", "cost_model": "@cost", "prompts": [PROMPTS + ":0.01"],
                  "max_steps": 2, "rollout_batch_size": 4, "minibatch_size": 2, "max_new_tokens": 4, "num_threads": 1}},
        {"name": "safety-after", "kind": "eval-safety",
         "with": {"policy": "@policy", "moderator": "@moderation", "prompts": [PROMPTS], "per_category": 1, "max_new_tokens": 4,
                  "cost": "@cost"}},
        {"name": "report", "kind": "report"},
    ]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    return path


def test_pipeline_runs_skips_finished_stages_and_reports(tmp_path):
    path = pipeline_file(tmp_path, tiny_llama(tmp_path / "policy"), tiny_bert(tmp_path / "encoder"))
    first = run_cli("run", str(path))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    assert "report: " in first.stdout
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "Before vs after" in page
    assert (run / "policy" / "curves.png").is_file() and (run / "unsafe_before_after.png").is_file()
    marker = json.loads((run / "policy" / "stage.json").read_text())
    assert marker["kind"] == "ppo-lag" and "train/lambda" in marker["metrics"]
    summary = json.loads((run / "summary.json").read_text())  # the first safety evaluation against the last
    assert (summary["before"], summary["after"], summary["prompts"]) == ("safety-before", "safety-after", 14)
    assert set(summary["unsafe_rate"]) == {"before", "after", "relative_change"} and summary["kl_to_reference"]["step"] == 2
    assert "Example answers" in page and "Summary" in page
    assert "moderator unsafe rate, 14 held-out prompts, safety-before -> safety-after" in first.stdout
    (run / "report" / "stage.json").unlink()  # the report is redone, everything else is skipped
    second = run_cli("run", str(path))
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("done, skipped") == 6
    assert "KL to the reference (policy, step 2)" in second.stdout  # the figures are printed at the end of every run


def test_pipeline_file_errors_name_the_stage(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stages": [{"name": "p", "kind": "ppo-lag", "with": {"reward_model": "@nowhere"}}]}))
    with pytest.raises(ConfigError, match="stage p: '@nowhere' does not name an earlier stage"):
        load_pipeline(bad)
    bad.write_text(yaml.safe_dump({"stages": [{"name": "x", "kind": "juggle"}]}))
    with pytest.raises(ConfigError, match=r"stages\[0\]: kind: must be one of"):
        load_pipeline(bad)


@pytest.mark.parametrize("name, overrides", [
    ("demo_pipeline.yaml", {}),
    ("demo_data_root.yaml", {"data_root": "/any/data/root"}),
    ("safe_rlhf_hub.yaml", {"pku_saferlhf_revision": "a" * 40, "beavertails_revision": "b" * 40,
                            "beavertails_evaluation_revision": "c" * 40}),
])
def test_shipped_pipelines_check(name, overrides):
    from pathlib import Path

    run_dir, stages = load_pipeline(Path(__file__).parents[1] / "configs" / name, overrides)  # every config built and validated
    kinds = {s.name: s.kind for s in stages}
    assert list(kinds.values())[-1] == "report" and "ppo-lag" in kinds.values()
    assert kinds["cost"] == "train-cost" and kinds["moderation"] == "train-moderation"
    evals = [s for s in stages if s.kind == "eval-safety"]
    assert len(evals) == 2 and evals[0].config.prompts == evals[1].config.prompts
    policy = next(s for s in stages if s.kind == "ppo-lag").config
    if name != "demo_pipeline.yaml":  # the larger pipelines: PPO never trains on an evaluation prompt
        assert set(evals[0].config.prompts) <= set(policy.exclude_prompts)
        assert "eval-arena" in kinds.values()
    if name == "demo_data_root.yaml":
        assert kinds["prompt-moderation"] == "train-moderation" and evals[0].config.per_category >= 8
        assert all(p.startswith("/any/data/root/") for p in policy.prompts + evals[0].config.safe_prompts)
        # the safe prompts are the held-out side of the file whose other side trains the prompt moderator
        prompt_data = next(s for s in stages if s.name == "prompt-moderation").config.data
        assert [p.replace("%train=", "%test=") for p in prompt_data] == evals[0].config.safe_prompts


def test_the_hub_pipeline_runs_only_on_pinned_revisions():
    from pathlib import Path

    with pytest.raises(ConfigError, match="pku_saferlhf_revision.*required"):
        load_pipeline(Path(__file__).parents[1] / "configs" / "safe_rlhf_hub.yaml")


def _two_stages(tmp_path, policy, reward_steps: int, typo: bool = False) -> object:
    small = {"per_device_batch_size": 4, "max_length": 64, "num_threads": 1, "save_every": 0, "eval_every": 0}
    second = {"model": str(policy), "data": [V1], "max_steps": 1, **small}
    if typo:
        second["max_stepz"] = 2
    stages = [
        {"name": "reward", "kind": "train-reward", "with": {"model": str(policy), "data": [V1], "max_steps": reward_steps, **small}},
        {"name": "cost", "kind": "train-cost", "with": second},
        {"name": "report", "kind": "report"},
    ]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    return path


def test_a_typo_in_the_last_stage_stops_the_run_before_anything_trains(tmp_path):
    path = _two_stages(tmp_path, tiny_llama(tmp_path / "policy"), 1, typo=True)
    proc = run_cli("run", str(path))
    assert proc.returncode == 1
    assert "stage cost: max_stepz: unknown field (did you mean max_steps?)" in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "reward").exists()  # the first stage never started


def test_a_stage_whose_settings_changed_is_rerun_with_what_depends_on_it(tmp_path):
    from safealign.pipeline import run_pipeline

    policy = tiny_llama(tmp_path / "policy")
    lines: list[str] = []
    run_pipeline(_two_stages(tmp_path, policy, 1), log=lines.append)
    marker = json.loads((tmp_path / "run" / "reward" / "stage.json").read_text())
    assert len(marker["settings_hash"]) == 64 and marker["settings"]["max_steps"] == 1
    lines.clear()
    run_pipeline(_two_stages(tmp_path, policy, 1), log=lines.append)
    assert sum("done, skipped" in line for line in lines) == 3  # nothing changed: nothing runs
    lines.clear()
    run_pipeline(_two_stages(tmp_path, policy, 2), log=lines.append)
    changed = [line for line in lines if "settings changed" in line]
    assert len(changed) == 2 and "max_steps: 1 -> 2" in changed[0], lines  # the reward stage, and the report that reads it
    assert "done, skipped" in next(line for line in lines if line.startswith("[2/3] cost"))  # cost reads nothing of reward
    assert json.loads((tmp_path / "run" / "reward" / "stage.json").read_text())["settings"]["max_steps"] == 2
    assert json.loads((tmp_path / "run" / "reward.stale" / "stage.json").read_text())["settings"]["max_steps"] == 1


def test_every_eval_command_is_a_stage_kind_with_its_config_checked_up_front(tmp_path):
    from safealign.evaluate.arena import ArenaConfig
    from safealign.evaluate.length import LengthConfig
    from safealign.evaluate.preference import PreferenceEvalConfig
    from safealign.moderation.evaluate import ModerationEvalConfig
    from safealign.moderation.guard import GuardConfig

    stages = [
        {"name": "pref", "kind": "eval-preference", "with": {"model": "r", "data": ["d.jsonl"]}},
        {"name": "mod", "kind": "eval-moderation", "with": {"model": "m", "data": ["d.jsonl"]}},
        {"name": "arena", "kind": "eval-arena", "with": {"reward": "r", "cost": "c", "prompts": ["p"], "red": "a", "blue": "b"}},
        {"name": "length", "kind": "eval-length", "with": {"reward": "r", "data": ["d.jsonl"], "unit": "words"}},
        {"name": "guard", "kind": "guard", "with": {"policy": "p", "moderator": "m", "prompts": ["p"], "safe_prompts": ["s"]}},
    ]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    _, loaded = load_pipeline(path)
    assert [type(s.config) for s in loaded] == [PreferenceEvalConfig, ModerationEvalConfig, ArenaConfig, LengthConfig, GuardConfig]
    assert loaded[4].config.output_dir == str(tmp_path / "run" / "guard")
    assert loaded[2].config.output_dir == str(tmp_path / "run" / "arena")
    stages[2]["with"]["blue"] = None  # one policy: not an arena
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    with pytest.raises(ConfigError, match="stage arena: policy: an arena needs at least two policies"):
        load_pipeline(path)


def test_variables_are_declared_substituted_overridden_and_recorded(tmp_path):
    from safealign.pipeline import _write_copy

    stages = [{"name": "pref", "kind": "eval-preference", "with": {"model": "${root}/r", "data": ["${root}/d.jsonl%test=0.2"]}},
              {"name": "length", "kind": "eval-length", "with": {"reward": "@pref/sub/file.txt", "data": ["d.jsonl"]}},
              {"name": "arena", "kind": "eval-arena", "with": {"policy": ["base=b", "tuned=@pref"], "reward": "r", "cost": "c",
                                                               "prompts": ["p"]}}]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"vars": {"root": "data"}, "run_dir": "${root}/run", "stages": stages}))
    run_dir, loaded = load_pipeline(path)
    assert run_dir.as_posix() == "data/run" and loaded[0].config.data == ["data/d.jsonl%test=0.2"]
    assert loaded[1].config.reward == "data/run/pref/sub/file.txt"  # "@stage/PATH": a file in that stage's folder
    assert loaded[2].config.policy == ["base=b", "tuned=data/run/pref/model"]  # "LABEL=@stage" for an arena's policies
    run_dir, loaded = load_pipeline(path, {"root": "/elsewhere"})
    assert loaded[0].config.model == "/elsewhere/r" and run_dir.as_posix() == "/elsewhere/run"
    _write_copy(path, tmp_path / "copy.yaml", {"root": "/elsewhere"})
    assert load_pipeline(tmp_path / "copy.yaml")[1][0].config.model == "/elsewhere/r"  # the copy runs as the run did
    with pytest.raises(ConfigError, match=r"--set rooot: the pipeline declares no such variable \(it declares: root\)"):
        load_pipeline(path, {"rooot": "x"})
    stages[0]["with"]["model"] = "${nope}/r"
    path.write_text(yaml.safe_dump({"vars": {"root": "data"}, "run_dir": "runs", "stages": stages}))
    with pytest.raises(ConfigError, match=r"stage pref: model: \$\{nope\}: not declared under vars"):
        load_pipeline(path)
    stages[0]["with"]["model"] = "org/model@${revision}"
    path.write_text(yaml.safe_dump({"vars": {"root": "data", "revision": None}, "run_dir": "runs", "stages": stages}))
    with pytest.raises(ConfigError, match=r"\$\{revision\}: required, it has no default \(--set revision=VALUE\)"):
        load_pipeline(path)
    assert load_pipeline(path, {"revision": "abc123"})[1][0].config.model == "org/model@abc123"
    proc = run_cli("run", str(path), "--set", "novalue")
    assert proc.returncode == 2 and "--set novalue: expected NAME=VALUE" in proc.stderr
