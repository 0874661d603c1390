"""`safealign run PIPELINE.yaml`: stages with artefacts in one run folder, resumable.

A pipeline file names a run folder and an ordered list of stages:

    run_dir: runs/demo
    stages:
      - {name: reward, kind: train-reward, with: {model: smollm2, data: [...], max_steps: 20}}
      - {name: policy, kind: ppo-lag, with: {actor: smollm2, reward_model: "@reward", cost_model: "@cost", ...}}
      - {name: report, kind: report}

Each stage writes into `run_dir/<name>/` (its `output_dir` is set there) and, when it
succeeds, a `stage.json` marker with its final metrics: a re-run skips finished stages, and
an interrupted training stage resumes from its own checkpoints. A value `"@name"` refers
to the model a previous stage produced (`run_dir/<name>/model`); `"@name/"` to its folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from safealign.config import ConfigError, config_from_mapping

MARKER = "stage.json"


def _kinds() -> dict[str, tuple[type, Callable[[Any], dict[str, Any]]]]:
    """Stage kinds: (config class, run function); imported lazily so `run --help` stays fast."""
    from safealign.evaluate.safety_config import SafetyEvalConfig, run_safety_eval
    from safealign.moderation.train import ModerationConfig, train_moderator
    from safealign.train.dpo import DPOConfig, train_dpo
    from safealign.train.ppo import PPOConfig, train_ppo
    from safealign.train.score import ScoreTrainConfig, train_score_model
    from safealign.train.sft import SFTConfig, train_sft

    return {
        "train-reward": (ScoreTrainConfig, lambda c: train_score_model(c, "reward")),
        "train-cost": (ScoreTrainConfig, lambda c: train_score_model(c, "cost")),
        "train-attributes": (ScoreTrainConfig, lambda c: train_score_model(c, "attributes")),
        "train-moderation": (ModerationConfig, train_moderator),
        "sft": (SFTConfig, train_sft),
        "dpo": (DPOConfig, train_dpo),
        "ppo": (PPOConfig, lambda c: train_ppo(c, "ppo")),
        "ppo-lag": (PPOConfig, lambda c: train_ppo(c, "ppo-lag")),
        "ppo-shaping": (PPOConfig, lambda c: train_ppo(c, "ppo-shaping")),
        "eval-safety": (SafetyEvalConfig, run_safety_eval),
    }


STAGE_KINDS = ("train-reward", "train-cost", "train-attributes", "train-moderation", "sft", "dpo", "ppo", "ppo-lag",
               "ppo-shaping", "eval-safety", "report")


@dataclass
class Stage:
    """One step of a pipeline."""

    name: str
    kind: str
    settings: dict[str, Any]


def load_pipeline(path: str | Path) -> tuple[Path, list[Stage]]:
    """The run folder and the stages of a pipeline file, every stage's config checked up front."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    if not isinstance(raw, dict) or "stages" not in raw:
        raise ConfigError(f"{path}: expected run_dir and a list of stages")
    run_dir = Path(raw.get("run_dir", "runs/pipeline"))
    stages: list[Stage] = []
    for i, item in enumerate(raw["stages"]):
        where = f"{path}: stages[{i}]"
        if not isinstance(item, dict) or "name" not in item or "kind" not in item:
            raise ConfigError(f"{where}: a stage needs a name and a kind")
        if item["kind"] not in STAGE_KINDS:
            raise ConfigError(f"{where}: kind: must be one of {', '.join(STAGE_KINDS)}, got {item['kind']!r}")
        if any(s.name == item["name"] for s in stages):
            raise ConfigError(f"{where}: name: {item['name']!r} is used twice")
        stages.append(Stage(item["name"], item["kind"], dict(item.get("with") or {})))
    names = [s.name for s in stages]
    for stage in stages:
        _check_references(stage, names[: names.index(stage.name)], path)
    return run_dir, stages


def _check_references(stage: Stage, earlier: list[str], path: str | Path) -> None:
    for value in _strings(stage.settings):
        if value.startswith("@") and value[1:].rstrip("/") not in earlier:
            raise ConfigError(f"{path}: stage {stage.name}: {value!r} does not name an earlier stage")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _resolve(value: Any, run_dir: Path) -> Any:
    """Replace "@stage" by that stage's model folder and "@stage/" by its folder."""
    if isinstance(value, str) and value.startswith("@"):
        name = value[1:]
        return str(run_dir / name.rstrip("/")) if name.endswith("/") else str(run_dir / name / "model")
    if isinstance(value, dict):
        return {k: _resolve(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, run_dir) for v in value]
    return value


def run_pipeline(path: str | Path, log: Callable[[str], None] = print) -> Path:
    """Run every unfinished stage in order; returns the run folder."""
    run_dir, stages = load_pipeline(path)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.yaml").write_text(Path(path).read_text(encoding="utf-8"))
    kinds = _kinds()
    for index, stage in enumerate(stages, 1):
        out = run_dir / stage.name
        if (out / MARKER).is_file():
            log(f"[{index}/{len(stages)}] {stage.name} ({stage.kind}): done, skipped")
            continue
        log(f"[{index}/{len(stages)}] {stage.name} ({stage.kind}) ...")
        started = time.perf_counter()
        if stage.kind == "report":
            from safealign.report import write_report

            metrics: dict[str, Any] = {"report": str(write_report(run_dir, [(s.name, s.kind) for s in stages]))}
        else:
            config_cls, run = kinds[stage.kind]
            settings = {**_resolve(stage.settings, run_dir), "output_dir": str(out)}
            metrics = run(config_from_mapping(config_cls, settings, f"stage {stage.name}")) or {}
        out.mkdir(parents=True, exist_ok=True)
        seconds = time.perf_counter() - started
        (out / MARKER).write_text(json.dumps({"kind": stage.kind, "seconds": seconds, "metrics": metrics}, indent=2, default=str))
        log(f"[{index}/{len(stages)}] {stage.name}: finished in {seconds:.0f} s")
    return run_dir
