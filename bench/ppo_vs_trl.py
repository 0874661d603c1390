"""PPO step time: safealign's `train_ppo` against TRL 1.12's `trl.experimental.ppo.PPOTrainer`,
and safealign's PPO-Lagrangian step time against its own PPO step time.

What is timed: whole PPO steps (sample a rollout batch, score it, compute KL-shaped rewards and
GAE, one pass of clipped-surrogate + value updates over the minibatches, per-step logging), as
the wall time between the ends of consecutive steps after `--warmup` steps. Model loading,
dataset preparation and the final checkpoint / export are outside the window. Each run is its
own subprocess (one after the other, never two at once) and starts only when the machine's
1-minute load is below `--max-load`. Steps during which other processes used more than
`--max-foreign` cores (machine CPU time minus the run's own, from /proc/stat, read at every
step end) are left out of the figures, and a run that keeps fewer than half its steps is
retried: on a shared machine the load average only says the machine was quiet at the start.

Same setting on both sides:

- Models: a random 2-layer Llama policy (hidden 32, byte-level BPE tokenizer trained on the
  bundled data) and a random `LlamaForSequenceClassification` reward model of the same config;
  the value model / reward critic starts from the reward model on both sides. safealign reads
  the same reward weights as a `ScoreModel` folder (backbone + linear head, head weights copied,
  bias 0). The reference policy is a frozen full copy of the policy on both sides (no LoRA).
- Prompts: bundled BeaverTails / PKU-SafeRLHF prompts whose rendered prompt has at least
  `--prompt-length` tokens, cut to their last `--prompt-length` tokens (safealign's
  `encode_prompts`); TRL gets those exact ids. Every batch is therefore (B, P) with no padding,
  so the data order does not change the work.
- Generation: exactly `--response-length` new tokens per episode on both sides, sampled at
  temperature 1 with the KV cache (safealign: min_new_tokens = max_new_tokens, so eos is
  suppressed; TRL: `response_length`, `stop_token=None`, so nothing stops or truncates early).
- Updates: rollout batch `--rollout-batch` episodes, minibatches of `--minibatch` episodes, one
  PPO epoch: rollout/minibatch policy and critic optimizer steps per PPO step on both sides
  (TRL: per_device_train_batch_size = rollout batch, gradient_accumulation_steps = 1,
  num_mini_batches = rollout/minibatch).
- fp32 weights, no autocast (TRL's PPOConfig defaults to bf16: turned off), no gradient
  checkpointing (TRL's default is on: turned off), no evaluation, no sample generations, no
  checkpoints while timing, `torch.set_num_threads(--threads)` in every run.

PPO-Lagrangian adds a cost model (another random sequence-classification Llama as a ScoreModel
folder) and a cost critic initialised from it, on the same prompts and batch shapes.

A fourth side, `trl-ppo-nogc`, is TRL with its trainer module's `gc.collect()` made a no-op:
informative only (TRL as shipped collects twice per step, which dominates a tiny-model step);
the target is judged against TRL as shipped.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .bench-venv-ppo/bin/python bench/ppo_vs_trl.py \\
        [--steps 16] [--warmup 3] [--repeats 2] [--rollout-batch 16] [--minibatch 8] \\
        [--prompt-length 48] [--response-length 48] [--threads 2] [--max-load 1.2] \\
        [--max-foreign 0.3] [--retries 3] [--profile FILE] [--json FILE]

Needs TRL 1.12 (the last release with `trl.experimental.ppo`): see bench/requirements-trl-ppo.txt.
`--profile FILE` also runs one more safealign PPO run under cProfile and writes the top
functions (by cumulative time, timed steps only) to FILE.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (  # noqa: E402 (bench/ is on the path: see bench/common.py)
    WindowProbe, build_tiny_llama, clean_steps, peak_rss_note, prompts, retry_until_clean, run_worker,
    tiny_llama_config, wait_for_quiet,
)


TARGET_SPEEDUP = 1.5  # TRL s/step ÷ safealign s/step, at least
TARGET_LAG_OVERHEAD = 1.25  # safealign ppo-lag s/step ÷ ppo s/step, at most
SIDES = ("safealign-ppo", "trl-ppo", "trl-ppo-nogc", "safealign-ppo-lag")


# --- models and prompts --------------------------------------------------------------------


def build_models(root: Path, seed: int) -> dict[str, str]:
    """The policy, reward and cost models: HF folders for TRL, ScoreModel folders for safealign."""
    import torch
    from transformers import LlamaForSequenceClassification

    from safealign.models.score import ScoreModel, load_score_tokenizer

    policy = build_tiny_llama(root / "policy", seed)
    tokenizer = load_score_tokenizer(policy)
    paths = {"policy": str(policy)}
    for offset, kind in enumerate(("reward", "cost"), start=1):
        torch.manual_seed(seed + offset)
        config = tiny_llama_config(tokenizer, 2048)
        config.num_labels = 1
        classifier = LlamaForSequenceClassification(config)
        classifier.save_pretrained(root / f"{kind}-hf")
        tokenizer.save_pretrained(root / f"{kind}-hf")
        score = ScoreModel(classifier.model, kind=kind, base_model=str(policy))
        with torch.no_grad():
            score.head.weight.copy_(classifier.score.weight)
            score.head.bias.zero_()
        score.save_pretrained(root / f"{kind}-score", tokenizer)
        paths[f"{kind}_hf"], paths[f"{kind}_score"] = str(root / f"{kind}-hf"), str(root / f"{kind}-score")
    return paths


# --- workers (one subprocess each) -----------------------------------------------------------


def run_safealign(args: argparse.Namespace, algorithm: str, paths: dict[str, str], scratch: Path) -> dict[str, Any]:
    """safealign's `train_ppo`, timed at the end of each `_rl_step` (the bench's only hook)."""
    import torch

    import safealign.train.ppo as ppo
    from safealign.config import build_config
    from safealign.models.score import load_score_tokenizer

    torch.set_num_threads(args.threads)
    dialogues, _ = prompts(load_score_tokenizer(paths["policy"]), args.prompt_length)
    overrides = [
        "--actor", paths["policy"], "--reward_model", paths["reward_score"], "--output_dir", str(scratch / "run"),
        "--max_steps", str(args.steps), "--rollout_batch_size", str(args.rollout_batch), "--minibatch_size", str(args.minibatch),
        "--ppo_epochs", "1", "--max_prompt_length", str(args.prompt_length), "--max_new_tokens", str(args.response_length),
        "--min_new_tokens", str(args.response_length), "--temperature", "1.0", "--learning_rate", "1e-5",
        "--save_every", "0", "--num_threads", str(args.threads), "--critic_init", "score-models", "--seed", str(args.seed),
        "--resume", "false", "--lr_scheduler", "linear", "--warmup_ratio", "0",
    ]
    if algorithm == "ppo-lag":
        overrides += ["--cost_model", paths["cost_score"]]
    cfg = build_config(ppo.PPOConfig, None, overrides)
    probe = WindowProbe(args.warmup, args.steps)
    original = ppo._rl_step
    profiler = None
    if args.worker_profile:
        import cProfile

        profiler = cProfile.Profile()

    def timed_step(*a: Any, **k: Any) -> dict[str, float]:
        on = profiler is not None and len(probe.ends) >= args.warmup
        if on:
            profiler.enable()
        metrics = original(*a, **k)
        if on:
            profiler.disable()
        probe.step_end()
        return metrics

    ppo._rl_step = timed_step
    try:
        ppo.train_ppo(cfg, algorithm, prompts=dialogues)  # type: ignore[arg-type]
    finally:
        ppo._rl_step = original
    rows = [json.loads(line) for line in (scratch / "run" / "metrics.jsonl").read_text().splitlines()]
    if profiler is not None:
        import io
        import pstats

        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(25)
        Path(args.worker_profile).write_text(text.getvalue())
    return {**probe.result(), "response_lengths": [r["train/response_length"] for r in rows], "peak_rss": peak_rss_note()}


def run_trl(args: argparse.Namespace, paths: dict[str, str], scratch: Path, skip_gc: bool = False) -> dict[str, Any]:
    """TRL 1.12's experimental PPOTrainer, timed at each `on_step_end`.

    `skip_gc` replaces the trainer module's `gc.collect()` (two full collections per step in
    TRL's loop: after the rollout and after the update) by a no-op: an informative variant that
    shows how much of TRL's step is garbage collection; the as-shipped run is the one the target
    is judged on.
    """
    import types

    import torch
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(paths["policy"], padding_side="left")
    _, prompt_ids = prompts(tokenizer, args.prompt_length)
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(paths["reward_hf"], num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(paths["reward_hf"], num_labels=1, dtype=torch.float32)
    config = PPOConfig(
        output_dir=str(scratch / "run"), per_device_train_batch_size=args.rollout_batch, gradient_accumulation_steps=1,
        num_mini_batches=args.rollout_batch // args.minibatch, num_ppo_epochs=1,
        total_episodes=args.steps * args.rollout_batch, local_rollout_forward_batch_size=args.rollout_batch,
        response_length=args.response_length, stop_token=None, temperature=1.0, missing_eos_penalty=None,
        learning_rate=1e-5, lr_scheduler_type="linear", warmup_steps=0, kl_coef=0.01, seed=args.seed,
        bf16=False, fp16=False, gradient_checkpointing=False, num_sample_generations=0,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1,
    )
    probe = WindowProbe(args.warmup, args.steps)
    widths: list[int] = []
    original = trl_ppo.batch_generation

    def recorded_generation(model, queries, *a, **k):  # type: ignore[no-untyped-def]
        out = original(model, queries, *a, **k)
        widths.append(out[0].shape[1] - queries.shape[1])
        return out

    class StepTimer(TrainerCallback):
        def on_step_end(self, _args, _state, control, **_kwargs):  # type: ignore[no-untyped-def]
            probe.step_end()
            return control

    trl_ppo.batch_generation = recorded_generation
    real_gc = trl_ppo.gc
    if skip_gc:
        trl_ppo.gc = types.SimpleNamespace(collect=lambda *a, **k: 0)
    try:
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
                             train_dataset=dataset, value_model=value, callbacks=[StepTimer()])
        trainer.train()
    finally:
        trl_ppo.batch_generation = original
        trl_ppo.gc = real_gc
    return {**probe.result(), "response_lengths": widths, "peak_rss": peak_rss_note()}


def worker(args: argparse.Namespace) -> None:
    scratch = Path(args.scratch)
    paths = json.loads((scratch / "paths.json").read_text())
    run_dir = scratch / f"{args.worker}-{time.time_ns()}"
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.worker.startswith("trl-"):
        result = run_trl(args, paths, run_dir, skip_gc=args.worker == "trl-ppo-nogc")
    else:
        result = run_safealign(args, args.worker.removeprefix("safealign-"), paths, run_dir)
    Path(args.result).write_text(json.dumps(result))


# --- driver ---------------------------------------------------------------------------------


def spawn(kind: str, args: argparse.Namespace, scratch: Path, profile: str | None = None) -> dict[str, Any]:
    """Run one side in a fresh subprocess after waiting for a quiet machine; retry a disturbed run."""
    def once() -> dict[str, Any]:
        load = wait_for_quiet(args.max_load)
        started = time.perf_counter()
        result = run_worker(__file__, ["--worker", kind, "--scratch", str(scratch), *(["--worker-profile", profile] if profile else [])],
                            kind, scratch)
        ends = result["ends"]
        if len(ends) <= args.warmup:
            raise SystemExit(f"{kind}: only {len(ends)} steps ran; need more than --warmup {args.warmup}")
        result["steps"] = clean_steps(result, args.warmup, args.max_foreign)
        result["load_before"] = load
        result["timed"] = len(ends) - args.warmup
        shown = f"median {statistics.median(result['steps']):.3f} s/step" if result["steps"] else "no clean step"
        print(f"  {kind:<18} {shown} over {len(result['steps'])}/{result['timed']} clean steps (load before {load:.2f}, "
              f"other processes {result['foreign_cores']:.2f} cores while timed{'' if clean(result) else ': disturbed'}, "
              f"wall {time.perf_counter() - started:.0f} s, peak RSS {result['peak_rss']})", flush=True)
        return result

    def clean(result: dict[str, Any]) -> bool:
        return len(result["steps"]) * 2 >= result["timed"]

    return retry_until_clean(once, args.retries, clean, lambda r: len(r["steps"]), lambda r: bool(r["steps"]), kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="PPO steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the timing (at least 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, the order rotating; medians reported")
    parser.add_argument("--rollout-batch", type=int, default=16, help="episodes sampled per PPO step (both sides)")
    parser.add_argument("--minibatch", type=int, default=8, help="episodes per optimizer step (both sides)")
    parser.add_argument("--prompt-length", type=int, default=48, help="prompt tokens per episode (exactly)")
    parser.add_argument("--response-length", type=int, default=48, help="response tokens per episode (exactly)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every run")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-load", type=float, default=1.2, help="wait before each run until the 1-minute load is below this")
    parser.add_argument("--max-foreign", type=float, default=0.3,
                        help="a step during which other processes kept more than this many cores busy is left out; "
                             "a run with fewer than half its steps left is retried")
    parser.add_argument("--retries", type=int, default=3, help="retries of a disturbed run (the cleanest one is kept)")
    parser.add_argument("--profile", type=Path, default=None, help="also profile one safealign PPO run; write the top functions here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-profile", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the window starts at the end of a step)")
    if args.rollout_batch % args.minibatch:
        parser.error("--rollout-batch must be a multiple of --minibatch (TRL's num_mini_batches)")
    if args.worker:
        worker(args)
        return

    import torch
    import transformers
    from importlib.metadata import version

    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        scratch = Path(tmp)
        paths = build_models(scratch / "models", args.seed)
        (scratch / "paths.json").write_text(json.dumps(paths))
        from safealign.models.score import load_score_tokenizer

        n_prompts = len(prompts(load_score_tokenizer(paths["policy"]), args.prompt_length)[0])
        print(f"{n_prompts} prompts of >= {args.prompt_length} tokens", flush=True)
        for repeat in range(args.repeats):
            order = SIDES[repeat % len(SIDES):] + SIDES[: repeat % len(SIDES)]
            for side in order:
                runs[side].append(spawn(side, args, scratch))
        if args.profile:
            spawn("safealign-ppo", args, scratch, profile=str(args.profile.resolve()))

    def per_step(side: str) -> float:
        return statistics.median(s for r in runs[side] for s in r["steps"])

    def window(side: str) -> float:
        """Mean step of each run over its whole timed window (disturbed steps included), median over runs."""
        return statistics.median((r["ends"][-1] - r["ends"][args.warmup - 1]) / (len(r["ends"]) - args.warmup) for r in runs[side])

    results = {side: {"median_s_per_step": per_step(side), "window_s_per_step": window(side),
                      "response_lengths": sorted({x for r in runs[side] for x in r["response_lengths"]}),
                      "foreign_cores": [round(r["foreign_cores"], 3) for r in runs[side]],
                      "clean_steps": [len(r["steps"]) for r in runs[side]],
                      "peak_rss": [r["peak_rss"] for r in runs[side]]} for side in SIDES}
    speedup = results["trl-ppo"]["median_s_per_step"] / results["safealign-ppo"]["median_s_per_step"]
    nogc = results["trl-ppo-nogc"]["median_s_per_step"] / results["safealign-ppo"]["median_s_per_step"]
    lag = results["safealign-ppo-lag"]["median_s_per_step"] / results["safealign-ppo"]["median_s_per_step"]
    print()
    print(f"PPO step time (s/step) | torch {torch.__version__}, transformers {transformers.__version__}, "
          f"trl {version('trl')}, threads {args.threads}, rollout {args.rollout_batch}, minibatch {args.minibatch}, "
          f"1 PPO epoch, prompt {args.prompt_length} + response {args.response_length} tokens, fp32, "
          f"{args.steps} steps ({args.warmup} warm-up), {args.repeats} run(s) per side")
    header = f"{'side':<20}{'median s/step':>15}{'window s/step':>15}  {'response lengths':<18}other cores per run"
    print(header)
    print("-" * len(header))
    for side in SIDES:
        r = results[side]
        lengths = ",".join(f"{x:g}" for x in r["response_lengths"])
        print(f"{side:<20}{r['median_s_per_step']:>15.3f}{r['window_s_per_step']:>15.3f}  {lengths:<18}"
              f"{', '.join(f'{x:.2f}' for x in r['foreign_cores'])}")
    print(f"TRL / safealign (PPO):          {speedup:.2f}x  (target >= {TARGET_SPEEDUP}: {'met' if speedup >= TARGET_SPEEDUP else 'not met'})")
    print(f"TRL without its gc.collect() / safealign (PPO): {nogc:.2f}x  (informative)")
    print(f"safealign ppo-lag / ppo:        {lag:.2f}   (target <= {TARGET_LAG_OVERHEAD}: {'met' if lag <= TARGET_LAG_OVERHEAD else 'not met'})")
    kept = ", ".join(f"{side} {sum(results[side]['clean_steps'])}" for side in SIDES)
    print(f"  median = over the clean timed steps of every run (steps with other processes above {args.max_foreign} "
          f"cores left out; kept: {kept})")
    print("  window = mean step of each run's whole timed window, disturbed steps included, median over runs;")
    print("  other cores = CPU that other processes used while a run was timed (machine total minus the run's own)")
    if args.profile:
        print(f"  cProfile of one safealign PPO run (timed steps): {args.profile}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "trl_over_safealign": speedup, "trl_nogc_over_safealign": nogc, "lag_over_ppo": lag,
                                         "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
