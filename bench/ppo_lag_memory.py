"""Peak memory of a PPO-Lagrangian run against a full fine-tune of the actor alone.

Numerator: safealign's `train_ppo(cfg, "ppo-lag")` with SmolLM2-135M-Instruct as the actor, LoRA
(r=8, α=16, peft's default modules) on the actor and both critics, the reference = the actor
with adapters disabled, a reward and a cost model that are ScoreModel folders built from
SmolLM2 with a fresh head (`ScoreModel.from_base(..., kind=...)` + `save_pretrained`), and the
critics initialised from them (`critic_init=score-models`). So the process holds five
135M-parameter networks: actor, reward model, cost model, reward critic, cost critic.

Denominator (`--baseline`):
- `sft` (default): safealign's `train_sft` without LoRA on the actor alone (AdamW over every
  weight), micro-batch = the PPO minibatch, max_length = prompt + response tokens, on the
  bundled PKU-SafeRLHF v1 pairs (nearly every sequence is cut to max_length, so batches have
  the PPO update's shape).
- `loop`: a plain causal-LM loop: the actor, `torch.optim.AdamW` over every weight, forward +
  backward on a (minibatch, prompt + response) batch of real tokens, clip, step.

Both sides use the same threads and run for a few optimizer steps, each in its own subprocess,
one after the other. Figures:
- peak RSS while training: VmHWM of the process read right after its last training step (so a
  final checkpoint or export, which neither needs for training, is left out);
- peak RSS of the whole process (`os.wait4` ru_maxrss), export included;
- the import floor: VmHWM of a process that only imports torch, transformers, peft and safealign,
  and the ratio net of it.
safealign's own estimate ("memory estimate (before loading)", printed by `train_ppo`) is shown
next to the measured numbers.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python bench/ppo_lag_memory.py \\
        [--baseline sft|loop] [--steps 3] [--rollout-batch 8] [--minibatch 4] \\
        [--prompt-length 64] [--response-length 48] [--threads 2] [--max-load 1.2] [--json FILE]

Needs the offline SmolLM2 folder (`safealign models install smollm2-135m-instruct`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import prompts, wait_for_quiet  # noqa: E402 (bench/ is on the path: see bench/common.py)

from safealign.assets import sample_path  # noqa: E402

ACTOR = "smollm2-135m-instruct"
PAIRS = sample_path("pku_saferlhf/v1_test_sample.jsonl")
TARGET_RATIO = 2.0
LORA = ("--lora.r", "8", "--lora.alpha", "16")


def vm_hwm_kib() -> int:
    """This process's peak resident set size so far (VmHWM), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


# --- workers (one subprocess each) -----------------------------------------------------------


def prepare(args: argparse.Namespace, scratch: Path) -> None:
    """Reward and cost ScoreModel folders from SmolLM2 (fresh heads), and the prompts."""
    import torch

    from safealign.models.score import ScoreModel, load_score_tokenizer

    tokenizer = load_score_tokenizer(ACTOR)
    for seed, kind in enumerate(("reward", "cost")):
        torch.manual_seed(args.seed + seed)
        ScoreModel.from_base(ACTOR, kind=kind).save_pretrained(scratch / kind, tokenizer)
    dialogues, _ = prompts(tokenizer, args.prompt_length)
    needed = args.steps * args.rollout_batch
    if len(dialogues) < needed:
        raise SystemExit(f"only {len(dialogues)} prompts have >= {args.prompt_length} tokens; need {needed}")
    (scratch / "prompts.json").write_text(json.dumps(dialogues[:needed]))


def run_ppo_lag(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import safealign.train.ppo as ppo
    from safealign.config import build_config

    dialogues = json.loads((scratch / "prompts.json").read_text())
    cfg = build_config(ppo.PPOConfig, None, [
        "--actor", ACTOR, "--reward_model", str(scratch / "reward"), "--cost_model", str(scratch / "cost"),
        "--critic_init", "score-models", *LORA, "--output_dir", str(scratch / "ppo-lag-run"),
        "--max_steps", str(args.steps), "--rollout_batch_size", str(args.rollout_batch),
        "--minibatch_size", str(args.minibatch), "--ppo_epochs", "1", "--max_prompt_length", str(args.prompt_length),
        "--max_new_tokens", str(args.response_length), "--min_new_tokens", str(args.response_length),
        "--save_every", "0", "--num_threads", str(args.threads), "--seed", str(args.seed), "--resume", "false",
        "--learning_rate", "1e-5",
    ])
    marks: dict[str, Any] = {"step_seconds": []}
    original = ppo._rl_step

    def measured_step(*a: Any, **k: Any) -> dict[str, float]:
        started = time.perf_counter()
        metrics = original(*a, **k)
        marks["step_seconds"].append(time.perf_counter() - started)
        marks["training_peak_kib"] = vm_hwm_kib()
        marks["response_length"] = metrics["train/response_length"]
        return metrics

    ppo._rl_step = measured_step
    try:
        ppo.train_ppo(cfg, "ppo-lag", prompts=dialogues)
    finally:
        ppo._rl_step = original
    return marks


def run_sft(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import safealign.train.loop as loop
    from safealign.train.sft import SFTConfig, train_sft

    cfg = SFTConfig(
        model=ACTOR, data=[str(PAIRS)], validation_split=0.0, output_dir=str(scratch / "sft-run"), response="better",
        safe_only=False, max_steps=args.steps, per_device_batch_size=args.minibatch,
        max_length=args.prompt_length + args.response_length, num_threads=args.threads, eval_every=0, save_every=0,
        resume=False, seed=args.seed, learning_rate=1e-5,
    )
    cfg.validate()
    marks: dict[str, Any] = {"step_seconds": [], "batch_shapes": []}
    original = loop._step

    def measured_step(task, model, optimizer, scheduler, acc, cfg_, indices, step, out):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        metrics = original(task, model, optimizer, scheduler, acc, cfg_, indices, step, out)
        marks["step_seconds"].append(time.perf_counter() - started)
        marks["training_peak_kib"] = vm_hwm_kib()
        marks["batch_shapes"].append([len(indices), max(len(task.train_examples[j]["input_ids"]) for j in indices)])
        return metrics

    loop._step = measured_step
    try:
        train_sft(cfg)
    finally:
        loop._step = original
    return marks


def run_loop(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import torch

    from safealign.train.loop import param_groups
    from safealign.train.policy import load_policy

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = load_policy(ACTOR)
    width = args.prompt_length + args.response_length
    text = " ".join(json.loads(line)["response_0"] for line in PAIRS.read_text().splitlines())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-5)
    model.train()
    marks: dict[str, Any] = {"step_seconds": [], "batch_shapes": []}
    for step in range(args.steps):
        started = time.perf_counter()
        offset = step * args.minibatch * width
        batch = torch.tensor(ids[offset : offset + args.minibatch * width]).view(args.minibatch, width)  # size = (B, L)
        loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks["step_seconds"].append(time.perf_counter() - started)
        marks["training_peak_kib"] = vm_hwm_kib()
        marks["batch_shapes"].append(list(batch.shape))
    return marks


def run_floor(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import safealign.train.ppo  # noqa: F401
    import safealign.train.sft  # noqa: F401

    return {"training_peak_kib": vm_hwm_kib(), "step_seconds": []}


WORKERS = {"prepare": prepare, "ppo-lag": run_ppo_lag, "sft": run_sft, "loop": run_loop, "floor": run_floor}


def worker(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    result = WORKERS[args.worker](args, Path(args.scratch))
    if args.result:
        Path(args.result).write_text(json.dumps(result))


# --- driver ---------------------------------------------------------------------------------


def spawn(kind: str, args: argparse.Namespace, scratch: Path, wait: bool = True) -> dict[str, Any]:
    """Run one worker in a fresh subprocess; its result plus ru_maxrss from wait4 and its stdout."""
    if wait:
        wait_for_quiet(args.max_load)
    result_file = scratch / f"result-{kind}.json"
    cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", kind, "--scratch", str(scratch), "--result", str(result_file)]
    out_path, err_path = scratch / f"{kind}.out", scratch / f"{kind}.err"
    started = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(out_path.read_text()[-4000:] + err_path.read_text()[-8000:])
        raise SystemExit(f"{kind} failed (exit {proc.returncode})")
    result = json.loads(result_file.read_text()) if kind != "prepare" else {}
    result["process_peak_kib"] = usage.ru_maxrss  # KiB on Linux
    result["stdout"] = out_path.read_text()
    result["wall"] = time.perf_counter() - started
    return result


def estimate_table(stdout: str) -> str:
    """The 'memory estimate (before loading)' table train_ppo printed."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("memory estimate"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("total"))
            return "\n".join(lines[i : end + 1])
    return "(no estimate printed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", choices=["sft", "loop"], default="sft", help="the full fine-tune of the actor alone")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps (PPO steps) per side")
    parser.add_argument("--rollout-batch", type=int, default=8, help="PPO episodes per step")
    parser.add_argument("--minibatch", type=int, default=4, help="PPO minibatch = the baseline's batch")
    parser.add_argument("--prompt-length", type=int, default=64, help="prompt tokens per episode (exactly)")
    parser.add_argument("--response-length", type=int, default=48, help="response tokens per episode (exactly)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-load", type=float, default=1.2, help="wait before each run until the 1-minute load is below this")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", choices=sorted(WORKERS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch
    import transformers
    from importlib.metadata import version

    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        scratch = Path(tmp)
        spawn("prepare", args, scratch, wait=False)
        runs = {kind: spawn(kind, args, scratch) for kind in ("floor", args.baseline, "ppo-lag")}
    mib = 1024
    floor = runs["floor"]["training_peak_kib"]
    lag, base = runs["ppo-lag"], runs[args.baseline]
    ratio = lag["training_peak_kib"] / base["training_peak_kib"]
    net = (lag["training_peak_kib"] - floor) / (base["training_peak_kib"] - floor)
    whole = lag["process_peak_kib"] / base["process_peak_kib"]
    print()
    print(f"peak RSS | torch {torch.__version__}, transformers {transformers.__version__}, peft {version('peft')}, "
          f"threads {args.threads}, actor {ACTOR} fp32, {args.steps} steps, rollout {args.rollout_batch}, "
          f"minibatch {args.minibatch}, prompt {args.prompt_length} + response {args.response_length} tokens")
    header = f"{'run':<46}{'training peak':>15}{'process peak':>14}{'s/step':>8}"
    print(header)
    print("-" * len(header))
    names = {"ppo-lag": "safealign ppo-lag (LoRA actor+critics, 5 nets)",
             "sft": "full fine-tune of the actor (train_sft)", "loop": "full fine-tune of the actor (plain loop)",
             "floor": "import floor (torch+transformers+peft+safealign)"}
    for kind in ("ppo-lag", args.baseline, "floor"):
        r = runs[kind]
        steps = r["step_seconds"][1:] or r["step_seconds"]
        per_step = f"{sum(steps) / len(steps):>8.1f}" if steps else f"{'':>8}"
        print(f"{names[kind]:<46}{r['training_peak_kib'] / mib:>11.0f} MiB{r['process_peak_kib'] / mib:>10.0f} MiB{per_step}")
    print(f"ratio ppo-lag / full fine-tune (training peak): {ratio:.2f}  (target <= {TARGET_RATIO}: "
          f"{'met' if ratio <= TARGET_RATIO else 'not met'})")
    print(f"  net of the import floor: {net:.2f}; whole-process peaks (export included): {whole:.2f}")
    if "batch_shapes" in base:
        print(f"  baseline batch shapes (B, L): {sorted({tuple(s) for s in base['batch_shapes']})}; "
              f"ppo-lag response length {lag.get('response_length')}")
    print()
    print("safealign's estimate, printed by train_ppo before loading:")
    print(estimate_table(lag["stdout"]))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": {k: {kk: vv for kk, vv in v.items() if kk != "stdout"} for k, v in runs.items()},
                                         "estimate": estimate_table(lag["stdout"]), "ratio": ratio, "net_ratio": net,
                                         "process_ratio": whole}, indent=2))


if __name__ == "__main__":
    main()
