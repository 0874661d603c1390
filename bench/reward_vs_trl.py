"""Reward-model training throughput: safealign's loop against TRL's RewardTrainer.

Both sides train a reward model (backbone + one linear score read at the last real token,
Bradley–Terry loss) on the same model, the same real PKU-SafeRLHF v1 pairs (chosen =
response[better_response_id]), the same token ids, the same per-device batch, maximum
length, optimizer-step count and torch threads, one after the other in one process.

- Data: the 100 bundled v1 pairs, rendered and tokenised once with safealign's
  `encode_dialogue` (chat template when the tokenizer has one, eos appended, long prompts
  cut from the left to `--max-length`). safealign trains from the file through
  `train_score_model(cfg, "reward")`; TRL gets the *same* ids as a pre-tokenised dataset
  (`chosen_ids` / `rejected_ids` columns), so no sequence is filtered out.
- Batches. `--order defaults`: each library draws its own (safealign: seeded length
  grouping, a feature of its loop; TRL: its random sampler). This is the comparison the
  1.5x target is judged on: same data, batch size and maximum length, each library as a
  user runs it. `--order same`: TRL reads the dataset sequentially in exactly the batch
  order safealign's loop draws (`safealign.train.batching.epoch_batches`, length grouped),
  so both sides pad and compute identical batches; printed as informative, it isolates
  the work per batch. `--order both` (default) runs the two.
- Both: fp32 weights and no autocast (`--precision bf16`: bf16 autocast on both; TRL's
  default is bf16, turned off for the fp32 default), no gradient checkpointing (TRL's
  default is on; turned off), no evaluation, no checkpoint while timing, dynamic right
  padding per batch, grad clipping at 1.0, gradient accumulation 1, AdamW in each
  library's own default implementation (safealign: `torch.optim.AdamW(fused=True)`; TRL:
  `adamw_torch_fused`).
- Timing: steady-state wall time from the end of the warm-up step(s) to the end of the last
  optimizer step, i.e. everything each library does per step (batch fetch and collate,
  forward, backward, clipping, optimizer and schedule, per-step logging). Model loading,
  data preparation, final checkpointing and export are outside the window.
- Figures: tokens/s is the median over every timed step of every run (other jobs on a shared
  machine slow some steps badly); the whole-window rate per run is printed too.
- Tokens: non-padding tokens actually fed (chosen + rejected) in the timed steps; safealign's
  are counted from the example ids of each step's batch, TRL's from its batch attention
  masks. With `--order same` the two counts must be equal (printed).

Models: `tiny` (a random 2-layer Llama, hidden 32, byte-level BPE tokenizer trained on the
data, built in a temporary folder) and `smollm2` (SmolLM2-135M-Instruct via safealign's
offline alias, full fine-tune on both sides).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .bench-venv/bin/python bench/reward_vs_trl.py \
        [--models tiny,smollm2] [--steps N] [--warmup 2] [--batch-size 4] [--max-length 256] \
        [--threads 2] [--order both|defaults|same] [--precision fp32|bf16] [--repeats 2] [--json FILE]

Needs TRL (see bench/requirements.txt and bench/README.md for the bench venv).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import build_tiny_llama  # bench/ is on the path: see bench/common.py

from safealign.assets import sample_path
from safealign.data.derive import pair_to_preference
from safealign.data.load import load
from safealign.data.records import DualPreferencePair, dialogue
from safealign.models.packing import packed_length
from safealign.models.registry import resolve_model
from safealign.models.score import load_score_tokenizer
from safealign.models.template import encode_dialogue
from safealign.train.batching import epoch_batches

DATA = sample_path("pku_saferlhf/v1_test_sample.jsonl")
DEFAULT_STEPS = {"tiny": 200, "smollm2": 10}
TARGET_RATIO = 1.5


# --- models -------------------------------------------------------------------------------


def model_location(name: str, scratch: Path) -> str:
    """A local Hugging Face folder both libraries load from."""
    if name == "tiny":
        return str(build_tiny_llama(scratch / "tiny-llama", max_positions=1024))
    if name == "smollm2":
        return resolve_model("smollm2-135m-instruct")
    raise SystemExit(f"unknown model {name!r}; use tiny or smollm2")


# --- data ---------------------------------------------------------------------------------


def pair_examples(tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """(chosen, rejected) ids of every v1 pair by helpfulness, rendered as safealign renders them."""
    examples = []
    for record in load([str(DATA)]).records:
        assert isinstance(record, DualPreferencePair)
        pair = pair_to_preference(record, "helpfulness")
        turns = dialogue(pair)
        a = encode_dialogue(tokenizer, turns, pair.chosen, max_length)
        b = encode_dialogue(tokenizer, turns, pair.rejected, max_length)
        examples.append({"a": a, "b": b, "length": max(len(a), len(b))})
    return examples


def safealign_order(examples: list[dict[str, Any]], batch: int, steps: int, seed: int, pack: bool) -> list[int]:
    """Example indices in the order safealign's loop feeds them (one process, no accumulation).

    The loop groups by the length it computes: the packed length of a pair when it packs.
    """
    lengths = [packed_length(e["a"], e["b"]) if pack else e["length"] for e in examples]
    order: list[int] = []
    epoch = 0
    while len(order) < steps * batch:
        for b in epoch_batches(lengths, batch, seed, epoch, group_by_length=True):
            order.extend(b)
        epoch += 1
    return order[: steps * batch]


# --- timing -------------------------------------------------------------------------------


@dataclass
class Clock:
    """End time and tokens of every optimizer step."""

    ends: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def tick(self, tokens: int) -> None:
        self.ends.append(time.perf_counter())
        self.tokens.append(tokens)

    def result(self, warmup: int) -> tuple[int, float, list[float]]:
        """(tokens, seconds) of the steps after the warm-up, and each of those steps' tokens/s."""
        if len(self.ends) <= warmup:
            raise SystemExit(f"only {len(self.ends)} steps ran; need more than --warmup {warmup}")
        rates = [self.tokens[i] / (self.ends[i] - self.ends[i - 1]) for i in range(warmup, len(self.ends))]
        return sum(self.tokens[warmup:]), self.ends[-1] - self.ends[warmup - 1], rates


def run_safealign(location: str, args: argparse.Namespace, steps: int, scratch: Path) -> Clock:
    """safealign's own reward-model path, timed per optimizer step around the loop's step."""
    from safealign.train import loop
    from safealign.train.score import ScoreTrainConfig, train_score_model

    clock = Clock()
    original = loop._step

    def timed_step(task, model, optimizer, scheduler, acc, cfg, indices, step, out):  # type: ignore[no-untyped-def]
        metrics = original(task, model, optimizer, scheduler, acc, cfg, indices, step, out)
        clock.tick(sum(len(task.train_examples[j]["a"]) + len(task.train_examples[j]["b"]) for j in indices))
        return metrics

    cfg = ScoreTrainConfig(
        model=location, data=[str(DATA)], validation_split=0.0, output_dir=str(scratch / "safealign"),
        max_steps=steps, per_device_batch_size=args.batch_size, max_length=args.max_length,
        learning_rate=args.learning_rate, num_threads=args.threads, eval_every=0, save_every=0,
        resume=False, seed=args.seed, mixed_precision="bf16" if args.precision == "bf16" else "no",
        pack_pairs=args.pack == "on",
    )
    cfg.validate()
    loop._step = timed_step  # the bench's only hook: a timer around safealign's own step
    try:
        train_score_model(cfg, "reward")
    finally:
        loop._step = original
    return clock


def run_trl(location: str, examples: list[dict[str, Any]], order: list[int] | None, tokenizer: Any,
            args: argparse.Namespace, steps: int, scratch: Path) -> Clock:
    """TRL's RewardTrainer on the same ids; `order` None lets its random sampler draw batches."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    clock = Clock()
    seen = [0]
    rows = examples if order is None else [examples[i] for i in order]
    dataset = Dataset.from_list([{"chosen_ids": e["a"], "rejected_ids": e["b"]} for e in rows])
    config = RewardConfig(
        output_dir=str(scratch / "trl"), per_device_train_batch_size=args.batch_size, max_steps=steps,
        max_length=args.max_length, learning_rate=args.learning_rate, seed=args.seed,
        gradient_checkpointing=False, bf16=args.precision == "bf16", fp16=False, max_grad_norm=1.0,
        center_rewards_coefficient=0.001,  # safealign's default mu * mean(r^2); negligible compute
        eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        train_sampling_strategy="sequential" if order is not None else "random",
        dataloader_drop_last=True, use_cpu=not torch.cuda.is_available(),  # bf16 on CPU needs use_cpu
    )

    class StepTimer(TrainerCallback):
        trainer: RewardTrainer | None = None

        def on_step_end(self, _args, _state, control, **_kwargs):  # type: ignore[no-untyped-def]
            total = self.trainer._total_train_tokens  # TRL's own count: attention-mask sum of the batches
            clock.tick(total - seen[0])
            seen[0] = total
            return control

    timer = StepTimer()
    trainer = RewardTrainer(model=location, args=config, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[timer])
    timer.trainer = trainer
    trainer.train()
    del trainer
    return clock


# --- driver -------------------------------------------------------------------------------


def measure(name: str, args: argparse.Namespace, order_kind: str) -> dict[str, Any]:
    steps = args.steps or DEFAULT_STEPS[name]
    runs: dict[str, list[tuple[int, float, list[float]]]] = {"safealign": [], "trl": []}
    with tempfile.TemporaryDirectory(prefix="bench-rm-") as tmp:
        scratch = Path(tmp)
        location = model_location(name, scratch)
        tokenizer = load_score_tokenizer(location)
        examples = pair_examples(tokenizer, args.max_length)
        order = safealign_order(examples, args.batch_size, steps, args.seed, args.pack == "on") if order_kind == "same" else None
        for repeat in range(args.repeats):
            sides = ["safealign", "trl"] if repeat % 2 == 0 else ["trl", "safealign"]
            for side in sides:
                run_dir = scratch / f"{side}-{repeat}"
                if side == "safealign":
                    clock = run_safealign(location, args, steps, run_dir)
                else:
                    clock = run_trl(location, examples, order, tokenizer, args, steps, run_dir)
                runs[side].append(clock.result(args.warmup))
                gc.collect()
    out: dict[str, Any] = {"model": name, "order": order_kind, "steps": steps}
    for side, results in runs.items():
        window = [tokens / seconds for tokens, seconds, _ in results]
        out[side] = {
            "tokens": results[0][0],
            # Median over every timed step of every run: other jobs on a shared machine slow
            # some steps a lot; the median step is what the library does when left alone.
            "tokens_per_second": statistics.median(rate for *_, rates in results for rate in rates),
            "window_tokens_per_second": statistics.median(window),
            "window_runs": window,
        }
    out["ratio"] = out["safealign"]["tokens_per_second"] / out["trl"]["tokens_per_second"]
    out["window_ratio"] = out["safealign"]["window_tokens_per_second"] / out["trl"]["window_tokens_per_second"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps per side, warm-up included (default {DEFAULT_STEPS})")
    parser.add_argument("--warmup", type=int, default=2,
                        help="first steps left out of the timing (at least 1; TRL's fused AdamW is slow on its first step)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step (both sides)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence (both sides)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides")
    parser.add_argument("--order", choices=["both", "defaults", "same"], default="both",
                        help="defaults: each library's own sampler (the target's comparison); same: TRL reads "
                        "safealign's batches, so both compute identical batches (informative); both: the two")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating which goes first; medians reported")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="fp32, or bf16 autocast on both sides (fp32 weights; "
                        "safealign mixed_precision=bf16, TRL bf16=True)")
    parser.add_argument("--pack", choices=["on", "off"], default="on",
                        help="safealign's pair packing (its default: on); off = padded rows like TRL")
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the window starts at the end of a step)")

    import transformers
    import trl
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    load_before = os.getloadavg()[0]
    orders = ["defaults", "same"] if args.order == "both" else [args.order]
    results = [measure(name, args, order) for name in names for order in orders]
    load_after = os.getloadavg()[0]

    print()
    print(f"reward-model training, tokens/s (non-padding chosen+rejected) | torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__}, threads {args.threads}, "
          f"batch {args.batch_size} pairs, max_length {args.max_length}, warm-up {args.warmup}, "
          f"{args.precision}, safealign packing {args.pack}, {args.repeats} run(s) per side")
    header = (f"{'model':<9}{'order':>9}{'steps':>6}{'tokens':>9}{'safealign tok/s':>17}{'TRL tok/s':>11}{'ratio':>7}"
              f"{'window ratio':>14}  target")
    print(header)
    print("-" * len(header))
    for r in results:
        same = "" if r["safealign"]["tokens"] == r["trl"]["tokens"] else f" (TRL fed {r['trl']['tokens']})"
        verdict = "met" if r["ratio"] >= TARGET_RATIO else "not met"
        target = f">= {TARGET_RATIO}: {verdict}" if r["order"] == "defaults" else "(informative)"
        print(f"{r['model']:<9}{r['order']:>9}{r['steps']:>6}{r['safealign']['tokens']:>9}"
              f"{r['safealign']['tokens_per_second']:>17.1f}"
              f"{r['trl']['tokens_per_second']:>11.1f}{r['ratio']:>7.2f}{r['window_ratio']:>14.2f}"
              f"  {target}{same}")
    print("  tok/s = median over the timed steps of all runs; window = whole timed window per run (median of runs)")
    print(f"  1-minute load average before {load_before:.2f}, after {load_after:.2f} "
          f"(other jobs on the machine skew both sides; trust a run only when it stayed below ~{args.threads})")
    for r in results:
        runs = " | ".join(
            f"{side} " + ", ".join(f"{v:.1f}" for v in r[side]["window_runs"]) for side in ("safealign", "trl")
        )
        print(f"  {r['model']} ({r['order']}) window tok/s per run: {runs}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
