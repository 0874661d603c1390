"""The remedies of "A Long Way to Go" side by side: reward models and PPO runs of configs/length_pipeline.yaml.

Runs the pipeline (`--run`; finished stages are reused) and prints, from its stage outputs:
- reward models (plain, length-balanced, off-prompt-augmented, confidence-truncated) on the
  held-out pairs (`%test=0.3` side, split by prompt): training pairs, pairwise accuracy
  overall and where the labelled answer is the shorter one, Pearson/Spearman of reward with
  length, how often the model prefers the longer answer; each against the plain model;
- PPO (plain reward, with a length penalty, length-only reward) on held-out
  BeaverTails-Evaluation prompts, all scored by the plain reward model: mean length before →
  after, reward gain Δ, non-length gain NRG and NRG / Δ; each against plain PPO.

    .venv/bin/python bench/length_remedies.py [--run] [--run-dir runs/length] [--set data_root=DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REWARDS = ("plain", "balanced", "augmented", "truncated")
POLICIES = ("plain", "penalty", "length-only")


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run (or finish) the pipeline first, timed")
    parser.add_argument("--run-dir", default="runs/length")
    parser.add_argument("--set", action="append", default=[], help="NAME=VALUE for the pipeline's vars")
    args = parser.parse_args()
    root = Path(args.run_dir)
    if args.run:
        started = time.perf_counter()
        command = [sys.executable, "-m", "safealign", "run", "configs/length_pipeline.yaml"]
        for item in args.set:
            command += ["--set", item]
        subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        print(f"pipeline: {time.perf_counter() - started:.0f} s")
    stages = {s.name: json.loads((s / "stage.json").read_text()) for s in root.iterdir() if (s / "stage.json").is_file()}
    total = sum(m["seconds"] for m in stages.values())
    print(f"{root}: {len(stages)} stages, {total / 60:.1f} min of stage time")

    print("\nreward models on the held-out pairs")
    print(f"{'model':<11} {'accuracy':>9} {'acc. shorter':>13} {'pearson':>8} {'spearman':>9} {'prefers longer':>15}")
    rows = {}
    for name in REWARDS:
        path = root / f"length-{name}" / "metrics.json"
        if not path.is_file():
            print(f"{name:<11} (not run)")
            continue
        pref = json.loads(path.read_text())["preference"]
        rm = pref["reward_model"]
        rows[name] = row = {"accuracy": rm["accuracy"], "shorter": rm["accuracy_shorter_preferred"], "pearson": pref["pearson"],
                            "spearman": pref["spearman"], "longer": rm["share_longer_preferred"]}
        print(f"{name:<11} {fmt(row['accuracy']):>9} {fmt(row['shorter']):>13} {fmt(row['pearson']):>8} "
              f"{fmt(row['spearman']):>9} {fmt(row['longer']):>15}")
        if name == "plain":
            labels = pref["labels"]
            print(f"{'(labels)':<11} {'':>9} {'':>13} {'':>8} {'':>9} {fmt(labels['share_longer_preferred']):>15}"
                  f"   {labels['pairs']} pairs, {labels['length_ties']} length ties")
    if "plain" in rows:
        base = rows["plain"]
        print("against plain: " + "; ".join(f"{name} accuracy {row['accuracy'] - base['accuracy']:+.3f}, "
                                            f"pearson {row['pearson'] - base['pearson']:+.3f}"
                                            for name, row in rows.items() if name != "plain"))

    print("\nPPO on held-out prompts, scored by the plain reward model")
    print(f"{'run':<12} {'length before → after':>22} {'Δ reward':>9} {'NRG':>8} {'NRG/Δ':>7} {'KL (last step)':>15}")
    for name in POLICIES:
        path = root / f"policy-{name}" / "metrics.json"
        if not path.is_file():
            print(f"{name:<12} (not run)")
            continue
        pol = json.loads(path.read_text())["policies"]
        kl = None
        log = root / f"ppo-{name}" / "metrics.jsonl"
        if log.is_file():
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            kl = next((r["train/kl"] for r in reversed(rows) if "train/kl" in r), None)
        lengths = f"{pol['mean_length_before']:.1f} → {pol['mean_length_after']:.1f}"
        print(f"{name:<12} {lengths:>22} {fmt(pol['reward_gain']):>9} {fmt(pol['non_length_gain']):>8} "
              f"{fmt(pol['non_length_share'], 2):>7} {fmt(kl):>15}")


if __name__ == "__main__":
    main()
