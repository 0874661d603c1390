"""Cost-model quality on real data: SmolLM2-135M-Instruct + LoRA, trained and judged on held-out pairs.

Trains a cost model through safealign's own path, `train_score_model(cfg, "cost")` with
`ScoreTrainConfig(lora=LoraSettings(...))`, on the real pairs bundled in
`safealign/assets/data`:

- PKU-SafeRLHF v1 (100 dual pairs, safety labels and harm categories),
- PKU-SafeRLHF v0 (32 dual pairs, safety labels),
- HH-RLHF harmless-base test (single preferences, chosen taken as the safer; no sign
  labels), a seeded `:PROPORTION` of it (default 0.1) to bound CPU time; rows the adapter
  rejects are skipped and counted (`skip_invalid=True`, as `--skip-invalid`).

A `validation_split` share is held out by prompt (safealign's own split). Printed: the
final `eval/accuracy` (the safer response costs less) and `eval/accuracy_sign` (sign of the
cost agrees with the is_safe label; dual pairs only) from the loop's final evaluation, the
same two per source (`safealign.evaluate.preference.evaluate_preference` on the held-out
records of each source, with the exported model folder), the chance / majority baselines,
and the wall time.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python bench/cost_model_quality.py \
        [--steps 120] [--batch-size 8] [--max-length 256] [--lora-r 16] [--lora-alpha 32] \
        [--lora-targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj] \
        [--learning-rate 5e-4] [--hh-proportion 0.1] [--validation-split 0.2] [--threads 2] \
        [--output-dir DIR] [--json FILE]

Runs in the main venv (no TRL needed). Needs the offline model installed
(`safealign models install smollm2-135m-instruct`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from safealign.assets import sample_path
from safealign.data.load import load, split_train_validation
from safealign.data.records import DualPreferencePair, Record
from safealign.evaluate.preference import evaluate_preference
from safealign.models.score import LoraSettings, ScoreModel, load_score_tokenizer
from safealign.train.score import ScoreTrainConfig, train_score_model

ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # every linear layer of a Llama block

SOURCES = {
    "pku_v1": "pku_saferlhf/v1_test_sample.jsonl",
    "pku_v0": "pku_saferlhf/v0_pairs_32.json",
    "hh_harmless": "hh_rlhf/harmless-base_test.jsonl.gz",
}


def data_specs(hh_proportion: float) -> list[str]:
    """The mixture as safealign specs (PATH[:PROPORTION])."""
    specs = [str(sample_path(SOURCES["pku_v1"])), str(sample_path(SOURCES["pku_v0"]))]
    hh = str(sample_path(SOURCES["hh_harmless"]))
    specs.append(hh if hh_proportion == 1.0 else f"{hh}:{hh_proportion}")
    return specs


def source_of(record: Record) -> str:
    """Which bundled file a record came from (its origin is `location:line`)."""
    location = (record.origin or "").rpartition(":")[0]
    for name, relative in SOURCES.items():
        if location.endswith(relative):
            return name
    return location or "?"


def held_out_records(cfg: ScoreTrainConfig) -> tuple[list[Record], list[Record]]:
    """The records the run trained and evaluated on: the same load and split as train_score_model."""
    loaded = load(cfg.data, cfg.format, strict=not cfg.skip_invalid, seed=cfg.seed)
    return split_train_validation(loaded.records, cfg.validation_split, cfg.seed)


def sign_baseline(records: list[Record]) -> float | None:
    """Accuracy of always predicting the majority safety label of the held-out responses."""
    labels = [r.is_safe(i) for r in records if isinstance(r, DualPreferencePair) for i in (0, 1)]
    labels = [v for v in labels if v is not None]
    if not labels:
        return None
    safe = sum(labels)
    return max(safe, len(labels) - safe) / len(labels)


def per_source(folder: Path, held_out: list[Record], max_length: int, batch_size: int) -> dict[str, dict[str, Any]]:
    """evaluate_preference on each source's held-out records with the exported (merged) model."""
    model = ScoreModel.from_pretrained(folder)
    tokenizer = load_score_tokenizer(folder)
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in held_out:
        groups[source_of(record)].append(record)
    out = {}
    for name in [*SOURCES, *sorted(set(groups) - set(SOURCES))]:
        records = groups.get(name)
        if not records:
            continue
        report = evaluate_preference(model, tokenizer, records, max_length=max_length, batch_size=batch_size)
        out[name] = {
            "pairs": report.pairs,
            "accuracy": report.accuracy,
            "accuracy_sign": report.accuracy_sign,
            "labelled_responses": len(report.scores_safe) + len(report.scores_unsafe),
            "sign_baseline": sign_baseline(records),
            "mean_cost_safe": report.metrics()["mean_score_safe"],
            "mean_cost_unsafe": report.metrics()["mean_score_unsafe"],
        }
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="offline alias, folder or hub id")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps (120 x 8 pairs: about 3 epochs)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence (prompt cut from the left)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--lora-targets", default=ALL_LINEAR,
                        help="comma-separated module names; '' for peft's default for the model (q_proj, v_proj on Llama)")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--hh-proportion", type=float, default=0.1, help="share of the 2,312 HH-RLHF harmless rows")
    parser.add_argument("--validation-split", type=float, default=0.2, help="held-out share, split by prompt")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-dir", type=Path, default=None, help="keep the run folder here (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        out = args.output_dir or Path(tmp) / "run"
        cfg = ScoreTrainConfig(
            model=args.model, data=data_specs(args.hh_proportion), skip_invalid=True,
            validation_split=args.validation_split, output_dir=str(out), max_steps=args.steps,
            per_device_batch_size=args.batch_size, max_length=args.max_length, learning_rate=args.learning_rate,
            lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha,
                              target_modules=args.lora_targets.split(",") if args.lora_targets else None),
            num_threads=args.threads, eval_every=0, save_every=0, resume=False, seed=args.seed,
        )
        cfg.validate()
        final = train_score_model(cfg, "cost")
        trained = time.perf_counter()
        train_records, held_out = held_out_records(cfg)
        sources = per_source(out / "model", held_out, args.max_length, args.batch_size)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    wall = time.perf_counter() - started
    train_rows = [r for r in rows if "train/tokens_per_second" in r]
    tokens_per_second = sum(r["train/tokens_per_second"] for r in train_rows) / max(1, len(train_rows))
    counts: dict[str, int] = defaultdict(int)
    for record in train_records:
        counts[source_of(record)] += 1

    print()
    print(f"cost model: {args.model} + LoRA r={args.lora_r} alpha={args.lora_alpha} on {args.lora_targets or 'peft default'}"
          f" | {args.steps} steps x "
          f"{args.batch_size} pairs, max_length {args.max_length}, lr {args.learning_rate}, threads {args.threads}, "
          f"HH proportion {args.hh_proportion}, validation_split {args.validation_split} (by prompt), seed {args.seed}")
    print(f"train pairs: {len(train_records)} ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
          f"held-out pairs: {len(held_out)}")
    header = f"{'held-out':<14}{'pairs':>6}{'pair acc':>10}{'sign acc':>10}{'sign base':>11}{'labelled':>10}{'cost safe':>11}{'cost unsafe':>13}"
    print(header)
    print("-" * len(header))
    for name, s in sources.items():
        print(f"{name:<14}{s['pairs']:>6}{_fmt(s['accuracy']):>10}{_fmt(s['accuracy_sign']):>10}"
              f"{_fmt(s['sign_baseline']):>11}{s['labelled_responses']:>10}{_fmt(s['mean_cost_safe']):>11}"
              f"{_fmt(s['mean_cost_unsafe']):>13}")
    print(f"{'all (loop)':<14}{len(held_out):>6}{_fmt(final.get('eval/accuracy')):>10}"
          f"{_fmt(final.get('eval/accuracy_sign')):>10}{_fmt(sign_baseline(held_out)):>11}")
    print("pair accuracy chance = 0.500; 'sign base' = always the majority label of those responses")
    print(f"wall time {wall:.0f} s (training run incl. load, final eval and export {trained - started:.0f} s; "
          f"mean train/tokens_per_second {tokens_per_second:.0f}); "
          f"1-minute load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "final_metrics": final, "per_source": sources, "train_pairs": len(train_records),
            "held_out_pairs": len(held_out), "wall_seconds": wall, "mean_tokens_per_second": tokens_per_second,
        }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
