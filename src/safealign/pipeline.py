"""`safealign run PIPELINE.yaml`: stages with artefacts in one run folder, resumable.

A pipeline file names a run folder and an ordered list of stages:

    run_dir: runs/demo
    stages:
      - {name: reward, kind: train-reward, with: {model: smollm2, data: [...], max_steps: 20}}
      - {name: policy, kind: ppo-lag, with: {actor: smollm2, reward_model: "@reward", cost_model: "@cost", ...}}
      - {name: report, kind: report}

Every stage's config is built and validated before the first stage starts, so a typo in
the last stage stops the run before anything trains, naming the stage and the field.

Each stage writes into `run_dir/<name>/` (its `output_dir` is set there) and, when it
succeeds, a `stage.json` marker with its final metrics and a hash of its resolved settings
(every field of its config, defaults included, and the hashes of the stages it refers to).
A re-run skips a finished stage whose hash is unchanged; one whose settings changed, or
whose inputs did, is re-run, and says which fields changed (its old folder is kept as
`<name>.stale/`). An interrupted training stage resumes from its own checkpoints. A value
`"@name"` refers to the model a previous stage produced (`run_dir/<name>/model`); `"@name/"`
to its folder, `"@name/PATH"` to a file in it; `"LABEL=@name"` (an arena's named policy) to
`LABEL=` and that model folder.

Variables: a top-level `vars:` mapping declares names with defaults, and `${name}` in
`run_dir` or in any string of a stage's `with:` is replaced by the value
(`safealign run PIPELINE --set name=value` overrides a default; a variable declared `null`
has none and must be set). An undeclared or unset `${name}`, or a `--set` of a name the
file does not declare, is an error naming it. The run folder's
copy of the pipeline records the values used.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from safealign.config import ConfigError, config_from_mapping, to_dict

MARKER = "stage.json"
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_LABELLED = re.compile(r"^(?P<label>[^=@/]+=)?(?P<ref>@.+)$")  # "@stage[/PATH]" or "LABEL=@stage[/PATH]"


def _kinds() -> dict[str, tuple[type, Callable[[Any], dict[str, Any]]]]:
    """Stage kinds: (config class, run function); imported lazily so `run --help` stays fast."""
    from safealign.evaluate.arena import ArenaConfig, run_arena
    from safealign.evaluate.length import LengthConfig, run_length
    from safealign.evaluate.preference import PreferenceEvalConfig, run_preference_eval
    from safealign.evaluate.safety import SafetyEvalConfig, run_safety_eval
    from safealign.moderation.evaluate import ModerationEvalConfig, run_moderation_eval
    from safealign.moderation.guard import GuardConfig, run_guard
    from safealign.moderation.train import ModerationConfig, train_moderator
    from safealign.train.dpo import DPOConfig, train_dpo
    from safealign.train.ppo import PPOConfig, train_ppo
    from safealign.train.score import ScoreTrainConfig, train_score_model
    from safealign.steer.evaluate import AdherenceEvalConfig, SteerEvalConfig, run_adherence_eval, run_steer_eval
    from safealign.steer.janus import JanusBuildConfig, run_janus_build
    from safealign.steer.label import LabelAttributesConfig, run_label_attributes
    from safealign.train.sft import SFTConfig, SteerLMConfig, train_sft

    return {
        "train-reward": (ScoreTrainConfig, lambda c: train_score_model(c, "reward")),
        "train-cost": (ScoreTrainConfig, lambda c: train_score_model(c, "cost")),
        "train-attributes": (ScoreTrainConfig, lambda c: train_score_model(c, "attributes")),
        "train-moderation": (ModerationConfig, train_moderator),
        "sft": (SFTConfig, train_sft),
        "steerlm": (SteerLMConfig, train_sft),
        "label-attributes": (LabelAttributesConfig, lambda c: run_label_attributes(c)["filled"]),
        "build-janus": (JanusBuildConfig, lambda c: {"made": run_janus_build(c)["made"]}),
        "eval-steer": (SteerEvalConfig, run_steer_eval),
        "eval-adherence": (AdherenceEvalConfig, run_adherence_eval),
        "dpo": (DPOConfig, train_dpo),
        "ppo": (PPOConfig, lambda c: train_ppo(c, "ppo")),
        "ppo-lag": (PPOConfig, lambda c: train_ppo(c, "ppo-lag")),
        "ppo-shaping": (PPOConfig, lambda c: train_ppo(c, "ppo-shaping")),
        "eval-safety": (SafetyEvalConfig, run_safety_eval),
        "eval-preference": (PreferenceEvalConfig, lambda c: run_preference_eval(c)[0].metrics()),
        "eval-moderation": (ModerationEvalConfig, lambda c: run_moderation_eval(c)["judges"]),
        "eval-arena": (ArenaConfig, lambda c: run_arena(c)[0]),
        "eval-length": (LengthConfig, lambda c: run_length(c)[0]),
        "guard": (GuardConfig, run_guard),
    }


STAGE_KINDS = ("train-reward", "train-cost", "train-attributes", "train-moderation", "sft", "steerlm", "label-attributes",
               "build-janus", "dpo", "ppo", "ppo-lag", "ppo-shaping", "eval-safety", "eval-preference", "eval-moderation",
               "eval-arena", "eval-length", "eval-steer", "eval-adherence", "guard", "report")


@dataclass
class Stage:
    """One step of a pipeline."""

    name: str
    kind: str
    settings: dict[str, Any]
    config: Any = None  # the validated config (None for the report)
    resolved: dict[str, Any] | None = None  # every field of the config, as it will run
    digest: str = ""  # hash of `resolved` and of the digests of the stages it refers to


def read_pipeline(path: str | Path, overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """The pipeline file as a mapping, its `vars` set (defaults, then `overrides`) and substituted."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    if not isinstance(raw, dict) or "stages" not in raw:
        raise ConfigError(f"{path}: expected run_dir and a list of stages")
    declared = raw.get("vars") or {}
    if not isinstance(declared, dict) or not all(v is None or isinstance(v, (str, int, float)) for v in declared.values()):
        raise ConfigError(f"{path}: vars: expected a mapping of names to strings, numbers or null (required)")
    variables: dict[str, str | None] = {str(k): None if v is None else str(v) for k, v in declared.items()}
    for name, value in (overrides or {}).items():
        if name not in variables:
            known = ", ".join(sorted(variables)) or "none"
            raise ConfigError(f"{path}: --set {name}: the pipeline declares no such variable (it declares: {known})")
        variables[name] = value
    raw["vars"] = variables
    raw["run_dir"] = _substitute(raw.get("run_dir", "runs/pipeline"), variables, f"{path}: run_dir")
    if isinstance(raw["stages"], list):
        for i, item in enumerate(raw["stages"]):
            if isinstance(item, dict) and item.get("with"):
                item["with"] = _substitute(item["with"], variables, f"{path}: stage {item.get('name', i)}")
    return raw


def _substitute(value: Any, variables: dict[str, str | None], where: str) -> Any:
    """`${name}` replaced by its value in every string of `value`."""
    if isinstance(value, str):
        def one(match: re.Match[str]) -> str:
            if match[1] not in variables:
                raise ConfigError(f"{where}: ${{{match[1]}}}: not declared under vars")
            found = variables[match[1]]
            if found is None:
                raise ConfigError(f"{where}: ${{{match[1]}}}: required, it has no default (--set {match[1]}=VALUE)")
            return found

        return _VARIABLE.sub(one, value)
    if isinstance(value, dict):
        return {k: _substitute(v, variables, f"{where}: {k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    return value


def load_pipeline(path: str | Path, overrides: dict[str, str] | None = None) -> tuple[Path, list[Stage]]:
    """The run folder and the stages of a pipeline file, every stage's config checked up front."""
    raw = read_pipeline(path, overrides)
    run_dir = Path(raw["run_dir"])
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
    _build_configs(stages, run_dir, path)
    return run_dir, stages


def _build_configs(stages: list[Stage], run_dir: Path, path: str | Path) -> None:
    """Build and validate every stage's config now, and hash what each will run with."""
    kinds = _kinds()
    digests: dict[str, str] = {}
    for stage in stages:
        if stage.kind == "report":
            resolved: dict[str, Any] = {"stages": [[s.name, s.kind] for s in stages]}
        else:
            config_cls, _ = kinds[stage.kind]
            settings = {**_resolve(stage.settings, run_dir), "output_dir": str(run_dir / stage.name)}
            stage.config = config_from_mapping(config_cls, settings, f"{path}: stage {stage.name}")
            resolved = json.loads(json.dumps(to_dict(stage.config), default=str))  # as the marker stores it
        reads = list(digests) if stage.kind == "report" else sorted(_references(stage))  # the report reads every stage
        inputs = {ref: digests[ref] for ref in reads}
        stage.resolved = resolved
        payload = json.dumps({"kind": stage.kind, "settings": resolved, "inputs": inputs}, sort_keys=True)
        stage.digest = digests[stage.name] = hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _references(stage: Stage) -> set[str]:
    """The earlier stages this one reads (`@name`, `@name/`, `@name/PATH`, `LABEL=@name`)."""
    refs = (_LABELLED.match(value) for value in _strings(stage.settings))
    return {m["ref"][1:].partition("/")[0] for m in refs if m}


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`field: old -> new` for every field that differs between two resolved settings."""
    keys = sorted(set(before) | set(after))
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys if before.get(k) != after.get(k)]


def _check_references(stage: Stage, earlier: list[str], path: str | Path) -> None:
    for name in sorted(_references(stage)):
        if name not in earlier:
            raise ConfigError(f"{path}: stage {stage.name}: '@{name}' does not name an earlier stage")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _resolve(value: Any, run_dir: Path) -> Any:
    """Replace "@stage" by that stage's model folder, "@stage/" by its folder and "@stage/PATH" by a file in it."""
    match = _LABELLED.match(value) if isinstance(value, str) else None
    if match:
        name, slash, rest = match["ref"][1:].partition("/")
        return (match["label"] or "") + (str(run_dir / name / rest) if slash else str(run_dir / name / "model"))
    if isinstance(value, dict):
        return {k: _resolve(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, run_dir) for v in value]
    return value


def run_pipeline(path: str | Path, log: Callable[[str], None] = print, overrides: dict[str, str] | None = None) -> Path:
    """Run every unfinished stage in order; returns the run folder."""
    run_dir, stages = load_pipeline(path, overrides)  # every stage's config checked before anything runs
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_copy(path, run_dir / "pipeline.yaml", overrides)
    kinds = _kinds()
    for index, stage in enumerate(stages, 1):
        out = run_dir / stage.name
        head = f"[{index}/{len(stages)}] {stage.name}"
        if (out / MARKER).is_file() and _still_valid(stage, out, head, log):
            continue
        log(f"{head} ({stage.kind}) ...")
        started = time.perf_counter()
        if stage.kind == "report":
            from safealign.report import write_report

            metrics: dict[str, Any] = {"report": str(write_report(run_dir, [(s.name, s.kind) for s in stages]))}
            metrics["summary"] = json.loads((run_dir / "summary.json").read_text())  # written beside report.html
        else:
            metrics = kinds[stage.kind][1](stage.config) or {}
        out.mkdir(parents=True, exist_ok=True)
        seconds = time.perf_counter() - started
        marker = {"kind": stage.kind, "seconds": seconds, "metrics": metrics, "settings_hash": stage.digest,
                  "settings": stage.resolved}
        (out / MARKER).write_text(json.dumps(marker, indent=2, default=str))
        log(f"{head}: finished in {seconds:.0f} s")
    if any(stage.kind == "report" for stage in stages) and (run_dir / "summary.json").is_file():
        from safealign.report import summary_lines

        for line in summary_lines(json.loads((run_dir / "summary.json").read_text())):
            log(line)
    return run_dir


def _write_copy(path: str | Path, target: Path, overrides: dict[str, str] | None) -> None:
    """The pipeline as run: the file's text, or with variables its mapping with the values used substituted."""
    raw = read_pipeline(path, overrides)
    if raw["vars"]:
        target.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    else:
        target.write_text(Path(path).read_text(encoding="utf-8"), encoding="utf-8")


def _still_valid(stage: Stage, out: Path, head: str, log: Callable[[str], None]) -> bool:
    """Whether a finished stage may be skipped; if not, its folder is moved to `<name>.stale`."""
    marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    recorded = marker.get("settings_hash")
    if recorded is None:
        log(f"{head} ({stage.kind}): done, skipped (its marker predates settings hashes: settings not compared)")
        return True
    if recorded == stage.digest:
        log(f"{head} ({stage.kind}): done, skipped")
        return True
    changes = changed_fields(marker.get("settings") or {}, stage.resolved or {})
    why = "; ".join(changes) if changes else "an earlier stage it reads was re-run or changed"
    stale = out.with_name(out.name + ".stale")
    if stale.exists():
        shutil.rmtree(stale)
    out.rename(stale)
    log(f"{head} ({stage.kind}): settings changed ({why}); re-running (the old results are in {stale})")
    return False
