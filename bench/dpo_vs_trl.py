"""DPO training throughput: safealign's `train_dpo` against TRL's `DPOTrainer`.

Both sides train the same policy with the sigmoid DPO loss (β = 0.1) on the same real
PKU-SafeRLHF v1 pairs (chosen = the more helpful response, `better_response_id`), the same
token ids, the same batches in the same order, the same per-device batch, maximum length,
optimizer-step count and torch threads. Each run is its own subprocess, one at a time, started
only when the machine's 1-minute load is below `--max-load`; steps during which other processes
used more than `--max-foreign` cores are left out of tokens/s, and a run keeping fewer than
half its steps is retried (see `WindowProbe` in ppo_vs_trl.py).

- Data: the bundled v1 pairs tokenised once with safealign's `encode_response` (chat template
  when the tokenizer has one, the response ending in one eos, prompt labels masked). Only pairs
  whose chosen *and* rejected sequences fit `--max-length` are kept, so neither library
  truncates (their truncation rules differ: safealign cuts the prompt's start, TRL the
  sequence end); the first steps × batch of them are used, one epoch. safealign trains from a
  JSONL file of exactly those records; TRL gets the same ids as `prompt_ids` / `chosen_ids` /
  `rejected_ids` (its tokenisation step is skipped; the collator, model and loss are TRL's).
- Order: both hold the pairs in file order (so both reference passes see the same batches,
  in file order, batch = the training batch); TRL's training sampler is replaced by the batch
  order safealign's loop draws (`epoch_batches`, length grouped), so both pad and compute the
  same training batches.
- Reference: full fine-tune (default): both precompute the reference log-probs of every
  training pair before training (safealign always does without LoRA; TRL
  `precompute_ref_log_probs=True`, batch = the training batch). `--lora`: LoRA r=8, α=16 on
  peft's default modules (q_proj, v_proj for Llama) on both sides, and the reference is the
  policy with adapters disabled, one extra no-grad forward per step on both sides (TRL
  `precompute_ref_log_probs=False`; safealign has no precompute under LoRA).
- Both: fp32 weights and no autocast (TRL's default bf16 turned off), no gradient
  checkpointing (TRL's default is on: turned off), no evaluation, no checkpoint while timing,
  dynamic right padding per batch, grad clipping at 1.0, AdamW in each library's default form
  (safealign `torch.optim.AdamW()`, TRL `adamw_torch_fused`).
- Timing: steady-state wall time between the ends of optimizer steps after `--warmup` steps
  (everything each library does per step). The precompute pass is *excluded* from tokens/s and
  printed on its own (with the other processes' CPU during it: a run whose precompute was
  disturbed is retried like one with disturbed steps); "end-to-end" adds it back: all tokens
  of all steps / (precompute + every step from the start of the first).
- Tokens: non-padding tokens (attention mask) of chosen + rejected, prompt included, per step;
  safealign's counted from the step's example ids, TRL's from its batch attention masks
  (`_total_train_tokens`). The two counts must agree (printed when not).

Models: `tiny` (random 2-layer Llama, hidden 32, BPE tokenizer trained on the data) and
`smollm2` (SmolLM2-135M-Instruct via safealign's offline alias).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .bench-venv/bin/python bench/dpo_vs_trl.py \\
        [--models tiny,smollm2] [--steps N] [--warmup 2] [--batch-size 4] [--max-length N] \\
        [--threads 2] [--lora] [--pack on|off] [--repeats 2] [--max-load 1.2] [--max-foreign 0.3] [--retries 3] \\
        [--json FILE]

Needs TRL with `DPOTrainer` (the bench venv of bench/requirements.txt).
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
    WindowProbe, build_tiny_llama, cpu_snapshot, foreign_cores, peak_rss_note, retry_until_clean, run_worker,
    wait_for_quiet,
)

from safealign.assets import sample_path  # noqa: E402

DATA = sample_path("pku_saferlhf/v1_test_sample.jsonl")
DEFAULTS = {"tiny": {"steps": 20, "max_length": 768}, "smollm2": {"steps": 8, "max_length": 256}}
TARGET_RATIO = 1.5
LORA = {"r": 8, "alpha": 16}
SIDES = ("safealign", "trl")


def model_location(name: str, scratch: Path) -> str:
    from safealign.models.registry import resolve_model

    if name == "tiny":
        return str(build_tiny_llama(scratch / "tiny-llama"))
    if name == "smollm2":
        return resolve_model("smollm2-135m-instruct")
    raise SystemExit(f"unknown model {name!r}; use tiny or smollm2")


def prepare(name: str, steps: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The model folder, the kept pairs (a JSONL for safealign, ids for TRL) and safealign's batch order."""
    from safealign.data.derive import pair_to_preference
    from safealign.data.load import load
    from safealign.data.records import dialogue
    from safealign.models.packing import packed_length
    from safealign.models.score import load_score_tokenizer
    from safealign.train.batching import epoch_batches
    from safealign.train.policy import IGNORE, encode_response

    location = model_location(name, scratch)
    tokenizer = load_score_tokenizer(location)
    lines = DATA.read_text().splitlines()
    records = load([str(DATA)]).records
    assert len(records) == len(lines)
    kept_lines, examples = [], []
    for line, record in zip(lines, records):
        pair = pair_to_preference(record, "helpfulness")
        turns = dialogue(pair)
        a = encode_response(tokenizer, turns, pair.chosen, 10**9)
        b = encode_response(tokenizer, turns, pair.rejected, 10**9)
        if max(len(a["input_ids"]), len(b["input_ids"])) > args.max_length_for[name]:
            continue
        n = a["labels"].count(IGNORE)
        assert n == b["labels"].count(IGNORE) and a["input_ids"][:n] == b["input_ids"][:n], "prompts differ"
        kept_lines.append(line)
        examples.append({"prompt_ids": a["input_ids"][:n], "chosen_ids": a["input_ids"][n:], "rejected_ids": b["input_ids"][n:]})
    wanted = steps * args.batch_size
    if len(examples) < wanted:
        raise SystemExit(f"{name}: only {len(examples)} pairs fit max_length {args.max_length_for[name]}; need {wanted} "
                         f"(steps x batch); lower --steps or raise --max-length")
    kept_lines, examples = kept_lines[:wanted], examples[:wanted]
    data_file = scratch / f"{name}-pairs.jsonl"
    data_file.write_text("\n".join(kept_lines) + "\n")
    # The lengths safealign's loop groups by: the packed pair (shared prefix once) when it packs.
    full = [(e["prompt_ids"] + e["chosen_ids"], e["prompt_ids"] + e["rejected_ids"]) for e in examples]
    lengths = [packed_length(a, b) if args.pack == "on" else max(len(a), len(b)) for a, b in full]
    order = [i for b in epoch_batches(lengths, args.batch_size, args.seed, 0, group_by_length=True) for i in b]
    prepared = {"location": location, "data_file": str(data_file), "examples": examples, "order": order,
                "max_length": args.max_length_for[name], "steps": steps}
    (scratch / f"{name}-prepared.json").write_text(json.dumps(prepared))
    return prepared


# --- workers (one subprocess each) -----------------------------------------------------------


def run_safealign(prep: dict[str, Any], args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """safealign's `train_dpo`, timed at the end of each loop step and around the reference pass."""
    import safealign.train.dpo as dpo
    import safealign.train.loop as loop
    from safealign.models.score import LoraSettings

    probe = WindowProbe(args.warmup, prep["steps"])
    tokens: list[int] = []
    marks: dict[str, float] = {}
    original_step, original_reference = loop._step, dpo.attach_reference

    def timed_step(task, model, optimizer, scheduler, acc, cfg, indices, step, out):  # type: ignore[no-untyped-def]
        marks.setdefault("start", time.perf_counter())
        metrics = original_step(task, model, optimizer, scheduler, acc, cfg, indices, step, out)
        probe.step_end()
        tokens.append(sum(len(task.train_examples[j][k]["input_ids"]) for j in indices for k in ("chosen", "rejected")))
        return metrics

    def timed_reference(*a: Any, **k: Any) -> None:
        before = cpu_snapshot()
        original_reference(*a, **k)
        after = cpu_snapshot()
        marks["precompute"], marks["precompute_foreign"] = after[0] - before[0], foreign_cores(before, after)

    cfg = dpo.DPOConfig(
        model=prep["location"], data=[prep["data_file"]], validation_split=0.0, output_dir=str(scratch / "run"),
        max_steps=prep["steps"], per_device_batch_size=args.batch_size, max_length=prep["max_length"],
        learning_rate=args.learning_rate, num_threads=args.threads, eval_every=0, save_every=0, resume=False,
        seed=args.seed, beta=0.1, preference="helpfulness", loss="dpo", pack_pairs=args.pack == "on",
        lora=LoraSettings(r=LORA["r"], alpha=LORA["alpha"]) if args.lora else None,
    )
    cfg.validate()
    loop._step, dpo.attach_reference = timed_step, timed_reference
    try:
        dpo.train_dpo(cfg)
    finally:
        loop._step, dpo.attach_reference = original_step, original_reference
    return {**probe.result(), "tokens": tokens, "start": marks["start"], "precompute": marks.get("precompute", 0.0),
            "precompute_foreign": marks.get("precompute_foreign", 0.0), "peak_rss": peak_rss_note()}


def run_trl(prep: dict[str, Any], args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """TRL's DPOTrainer on the same ids in the same order (its tokenisation step skipped)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from safealign.models.score import load_score_tokenizer

    probe = WindowProbe(args.warmup, prep["steps"])
    tokens: list[int] = []
    marks: dict[str, float] = {}

    class PretokenizedDPOTrainer(DPOTrainer):
        """The data is already tokenised (with safealign's renderer); skip TRL's tokenisation."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # type: ignore[no-untyped-def]
            return dataset

        def _get_train_sampler(self, train_dataset=None):  # type: ignore[no-untyped-def]
            return list(prep["order"])  # safealign's batch order over the file-order dataset

        def _precompute_ref_logps(self, dataset, name, batch_size):  # type: ignore[no-untyped-def]
            before = cpu_snapshot()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            after = cpu_snapshot()
            marks["precompute"], marks["precompute_foreign"] = after[0] - before[0], foreign_cores(before, after)
            return out

    class StepTimer(TrainerCallback):
        def on_step_begin(self, _args, _state, control, **_kwargs):  # type: ignore[no-untyped-def]
            marks.setdefault("start", time.perf_counter())
            return control

        def on_step_end(self, _args, _state, control, **_kwargs):  # type: ignore[no-untyped-def]
            probe.step_end()
            tokens.append(trainer._total_train_tokens - sum(tokens))
            return control

    dataset = Dataset.from_list(prep["examples"])  # file order, as safealign holds them
    tokenizer = load_score_tokenizer(prep["location"])  # the pad token safealign uses, right padding
    model = AutoModelForCausalLM.from_pretrained(prep["location"], dtype=torch.float32)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, task_type="CAUSAL_LM")
    config = DPOConfig(
        output_dir=str(scratch / "run"), per_device_train_batch_size=args.batch_size, max_steps=prep["steps"],
        max_length=prep["max_length"], learning_rate=args.learning_rate, seed=args.seed, beta=0.1, loss_type=["sigmoid"],
        precompute_ref_log_probs=not args.lora, precompute_ref_batch_size=args.batch_size,
        gradient_checkpointing=False, bf16=False, fp16=False, max_grad_norm=1.0, lr_scheduler_type="cosine",
        warmup_steps=0, eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_drop_last=True, logging_steps=10,
    )
    trainer = PretokenizedDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                                     callbacks=[StepTimer()], peft_config=peft_config)
    trainer.train()
    return {**probe.result(), "tokens": tokens, "start": marks["start"], "precompute": marks.get("precompute", 0.0),
            "precompute_foreign": marks.get("precompute_foreign", 0.0), "peak_rss": peak_rss_note()}


def worker(args: argparse.Namespace) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    scratch = Path(args.scratch)
    prep = json.loads((scratch / f"{args.model_name}-prepared.json").read_text())
    run_dir = scratch / f"{args.worker}-{time.time_ns()}"
    result = run_safealign(prep, args, run_dir) if args.worker == "safealign" else run_trl(prep, args, run_dir)
    Path(args.result).write_text(json.dumps(result))


# --- driver ---------------------------------------------------------------------------------


def spawn(side: str, name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Run one side in a fresh subprocess after waiting for a quiet machine; retry a disturbed run."""
    def once() -> dict[str, Any]:
        load = wait_for_quiet(args.max_load)
        started = time.perf_counter()
        r = run_worker(__file__, ["--worker", side, "--model-name", name, "--scratch", str(scratch)], f"{side} on {name}", scratch)
        w = args.warmup
        if len(r["ends"]) <= w:
            raise SystemExit(f"{side}: only {len(r['ends'])} steps ran; need more than --warmup {w}")
        rates = [t / (b - a) for t, a, b in zip(r["tokens"][w:], r["ends"][w - 1 :], r["ends"][w:])]
        r["rates"] = [x for x, f in zip(rates, r["step_foreign"]) if f <= args.max_foreign]
        r["timed"] = len(rates)
        r["timed_tokens"] = sum(r["tokens"][w:])
        r["window_rate"] = r["timed_tokens"] / (r["ends"][-1] - r["ends"][w - 1])
        r["end_to_end_rate"] = sum(r["tokens"]) / (r["precompute"] + r["ends"][-1] - r["start"])
        r["load_before"] = load
        shown = f"median {statistics.median(r['rates']):.0f} tok/s" if r["rates"] else "no clean step"
        print(f"  {name} {side:<10} {shown} over {len(r['rates'])}/{len(rates)} clean steps, precompute "
              f"{r['precompute']:.1f} s with {r['precompute_foreign']:.2f} other cores (load before {load:.2f}, other processes {r['foreign_cores']:.2f} cores while timed"
              f"{'' if clean(r) else ': disturbed'}, wall {time.perf_counter() - started:.0f} s, peak RSS {r['peak_rss']})",
              flush=True)
        return r

    def clean(r: dict[str, Any]) -> bool:
        return len(r["rates"]) * 2 >= r["timed"] and r["precompute_foreign"] <= args.max_foreign

    return retry_until_clean(once, args.retries, clean, lambda r: (len(r["rates"]), -r["precompute_foreign"]),
                             lambda r: bool(r["rates"]), f"{side} on {name}")


def measure(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    steps = args.steps or DEFAULTS[name]["steps"]
    prep = prepare(name, steps, args, scratch)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in (SIDES if repeat % 2 == 0 else SIDES[::-1]):
            runs[side].append(spawn(side, name, args, scratch))
    out: dict[str, Any] = {"model": name, "steps": steps, "pairs": len(prep["examples"]), "max_length": prep["max_length"]}
    for side, rs in runs.items():
        out[side] = {
            "tokens": rs[0]["timed_tokens"],
            "step_tokens": rs[0]["tokens"],
            "tokens_per_second": statistics.median(x for r in rs for x in r["rates"]),
            "window_tokens_per_second": statistics.median(r["window_rate"] for r in rs),
            "end_to_end_tokens_per_second": statistics.median(r["end_to_end_rate"] for r in rs),
            "precompute_seconds": statistics.median(r["precompute"] for r in rs),
            "precompute_foreign": [round(r["precompute_foreign"], 3) for r in rs],
            "peak_rss": [r["peak_rss"] for r in rs],
            "foreign_cores": [round(r["foreign_cores"], 3) for r in rs],
            "clean_steps": [len(r["rates"]) for r in rs],
        }
    for key in ("tokens_per_second", "window_tokens_per_second", "end_to_end_tokens_per_second"):
        out[key.replace("tokens_per_second", "ratio")] = out["safealign"][key] / out["trl"][key]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimizer steps per run, warm-up included (default {({k: v['steps'] for k, v in DEFAULTS.items()})})")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing (at least 1)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step (both sides)")
    parser.add_argument("--pack", choices=["on", "off"], default="on",
                        help="safealign's pair packing (its default: on); off = padded rows like TRL")
    parser.add_argument("--max-length", type=int, default=None,
                        help=f"tokens per sequence; longer pairs are left out (default {({k: v['max_length'] for k, v in DEFAULTS.items()})})")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every run")
    parser.add_argument("--lora", action="store_true", help="LoRA (r=8, alpha=16) on both sides, reference = adapters disabled")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating which goes first; medians reported")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-load", type=float, default=1.2, help="wait before each run until the 1-minute load is below this")
    parser.add_argument("--max-foreign", type=float, default=0.3,
                        help="a step during which other processes kept more than this many cores busy is left out; "
                             "a run with fewer than half its steps left is retried")
    parser.add_argument("--retries", type=int, default=3, help="retries of a disturbed run (the cleanest one is kept)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-name", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the window starts at the end of a step)")
    args.max_length_for = {k: args.max_length or v["max_length"] for k, v in DEFAULTS.items()}
    if args.worker:
        worker(args)
        return

    import torch
    import transformers
    import trl

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        results = [measure(name, args, Path(tmp)) for name in names]

    mode = f"LoRA r={LORA['r']} alpha={LORA['alpha']}, reference = adapters disabled (per step, both)" if args.lora \
        else "full fine-tune, reference log-probs precomputed (both)"
    print()
    print(f"DPO training, tokens/s (non-padding chosen+rejected, prompt included) | torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__}, threads {args.threads}, "
          f"batch {args.batch_size} pairs, fp32, {mode}, safealign packing {args.pack}, warm-up {args.warmup}, {args.repeats} run(s) per side")
    header = (f"{'model':<9}{'steps':>6}{'maxlen':>7}{'tokens':>8}{'safealign tok/s':>17}{'TRL tok/s':>11}{'ratio':>7}"
              f"{'window':>8}{'e2e':>7}{'precompute s (sa/TRL)':>23}  target")
    print(header)
    print("-" * len(header))
    for r in results:
        same = "" if r["safealign"]["step_tokens"] == r["trl"]["step_tokens"] else " (token counts differ!)"
        verdict = "met" if r["ratio"] >= TARGET_RATIO else "not met"
        pre = f"{r['safealign']['precompute_seconds']:.1f}/{r['trl']['precompute_seconds']:.1f}"
        print(f"{r['model']:<9}{r['steps']:>6}{r['max_length']:>7}{r['safealign']['tokens']:>8}"
              f"{r['safealign']['tokens_per_second']:>17.1f}{r['trl']['tokens_per_second']:>11.1f}{r['ratio']:>7.2f}"
              f"{r['window_ratio']:>8.2f}{r['end_to_end_ratio']:>7.2f}{pre:>23}  >= {TARGET_RATIO}: {verdict}{same}")
    print("  tok/s = median over the clean timed steps of all runs (precompute excluded; steps with other processes")
    print(f"  above {args.max_foreign} cores left out); window = whole timed window, disturbed steps included;")
    print("  e2e = all steps' tokens / (precompute + all steps incl. warm-up); ratios are safealign / TRL")
    for r in results:
        print(f"  {r['model']}: other processes' cores while timed, per run (clean steps kept): "
              + " | ".join(f"{side} " + ", ".join(f"{x:.2f} ({n})" for x, n in zip(r[side]["foreign_cores"], r[side]["clean_steps"]))
                           for side in SIDES))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
