"""Label credibility on real data: our audit against Docta's findings, synthetic noise with known truth, and cleanlab.

Three measurements, on a data root (`../shared/data` by default; see its README):

1. **Against Docta's own findings.** The five HH-RLHF sets with Docta's suggestions
   (`hh_rlhf/docta/*`: four chosen/rejected sets, one red-team set with ratings): the
   precision and recall of our flags against Docta's (`suggest_chosen_rejected` other
   than ["chosen", "rejected"], `suggest_rating` other than the rating).
2. **Synthetic noise with known truth.** The PKU-SafeRLHF realign pairs (response 0 labelled
   safe, response 1 unsafe; the bundled v1 sample's prompts removed, they are the test of
   step 3): 10 % and 20 % of the labels flipped with a seed, both as the responses' safety
   labels (`is_safe`, 10,270 responses) and as the pair order (`safer`, the pair shown in a
   random orientation first so that the clean labels are not all one class). Precision,
   recall and F1 of detection, and the estimated noise rate against the true one, for
   SimiFeat-rank (HOC's noise share), SimiFeat-vote, confident learning (ours) and cleanlab's
   `find_label_issues` on the same out-of-fold probabilities, with the seconds each took.
3. **Downstream.** A moderator (frozen MiniLM embeddings + class-balanced logistic
   regression: the embedding moderator's unsafe head) trained on the 20 %-noisy responses,
   on them cleaned by each method, and on the clean labels; unsafe F1 and accuracy on the
   bundled v1 sample (200 responses no candidate saw): how much of the loss to noise the
   cleaning recovers.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/label_audit.py [--data-root ../shared/data] [--k 10] [--json FILE]

cleanlab is a bench dependency, installed beside the main venv:
`.venv/bin/pip install --no-deps --target .bench/audit-deps -r bench/requirements-audit.txt`
(without it the cleanlab column is skipped, with a note). Needs `safealign models install minilm`.
Embeddings are cached (`~/.cache/safealign/embeddings`), so a second run embeds nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import wait_for_quiet  # noqa: F401 (bench/ is on the path: see bench/common.py; sets offline mode)

import numpy as np

from safealign.assets import sample_path
from safealign.audit.credibility import (
    confident_learning,
    detection_quality,
    estimate_transition,
    nearest_neighbours,
    out_of_fold_probabilities,
    simifeat,
)
from safealign.audit.labels import label_sets
from safealign.audit.run import audit_labels, embed_texts, item_features
from safealign.data.load import load

DEPS = Path(__file__).resolve().parents[1] / ".bench" / "audit-deps"
DOCTA = ["harmless-base_train_docta_100.jsonl.gz", "helpful-base_train_docta_100.jsonl.gz",
         "helpful-online_train_docta_100.jsonl.gz", "helpful-rejection-sampled_train_docta_100.jsonl.gz",
         "red-team-attempts_red_team_attempts_docta_100.jsonl.gz"]
REALIGN = "pku_saferlhf/realign_dpo_5135.json"
V1 = "pku_saferlhf/v1_test_sample.jsonl"


def cleanlab_issues(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """cleanlab's find_label_issues on the same out-of-fold probabilities (None when cleanlab is not installed)."""
    if DEPS.is_dir() and str(DEPS) not in sys.path:
        sys.path.insert(0, str(DEPS))
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None
    return np.asarray(find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate"), dtype=bool)


def docta_agreement(root: Path, k: int) -> list[dict[str, Any]]:
    """Our flags (SimiFeat-rank and confident learning) against Docta's suggestions on its five HH-RLHF sets."""
    out = []
    for name in DOCTA:
        records = load(str(root / "hh_rlhf" / "docta" / name), strict=False).records  # a few HH pairs are malformed
        red_team = name.startswith("red-team")
        label = "rating" if red_team else "chosen"
        if red_team:
            docta = np.array([r.meta["suggest_rating"] != r.meta["rating"] for r in records])
            flips = docta
        else:  # Docta's suggestion is the order it believes: ["rejected", "chosen"] a flip, two equal names a tie
            suggestion = [list(r.meta["suggest_chosen_rejected"]) for r in records]
            docta = np.array([s != ["chosen", "rejected"] for s in suggestion])
            flips = np.array([s == ["rejected", "chosen"] for s in suggestion])
        row: dict[str, Any] = {"set": name.split("_docta")[0], "label": label, "records": len(records),
                               "docta_flagged": int(docta.sum()), "docta_flips": int(flips.sum())}
        for method in ("simifeat-rank", "confident"):
            started = time.perf_counter()
            audit = audit_labels(records, label, method, k, progress=False)
            flagged = np.zeros(len(records), dtype=bool)
            for part in audit.sets:
                for n, item in enumerate(part.labels.items):
                    flagged[item.record] |= bool(part.detection.is_issue[n])
            quality = detection_quality(flagged, docta)
            row[method] = {**quality, "noise_rate": audit.sets[0].noise_rate(), "seconds": time.perf_counter() - started,
                           "against_flips_only": detection_quality(flagged, flips)}
        out.append(row)
        print(f"  {row['set']:<28} Docta flags {row['docta_flagged']:>3}/{len(records)} ({row['docta_flips']} flips) | ours (rank) {row['simifeat-rank']['flagged']:>3}: "
              f"P {row['simifeat-rank']['precision']:.2f} R {row['simifeat-rank']['recall']:.2f} | confident "
              f"{row['confident']['flagged']:>3}: P {row['confident']['precision']:.2f} R {row['confident']['recall']:.2f}",
              flush=True)
    return out


def synthetic(root: Path, k: int, rates: tuple[float, ...], embedder: str = "minilm") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Detection on realign labels flipped at known rates; returns the rows and what the downstream step needs."""
    test_prompts = {r.prompt for r in load(str(sample_path(V1))).records}
    pairs = [r for r in load(str(root / REALIGN)).records if r.prompt not in test_prompts]
    [responses] = label_sets(pairs, "is_safe")
    [order] = label_sets(pairs, "safer", seed=0)
    embed = lambda texts: embed_texts(texts, embedder, 256)  # noqa: E731
    started = time.perf_counter()
    features = {"is_safe": item_features(responses, embed), "safer": item_features(order, embed)}
    print(f"  features: {len(responses.items)} responses, {len(order.items)} pairs ({time.perf_counter() - started:.0f} s,"
          " cached after the first run)", flush=True)
    rows, keep = [], {}
    for target, labels in (("is_safe", responses), ("safer", order)):
        truth = np.array([it.label for it in labels.items])
        x = features[target]
        neighbours = nearest_neighbours(x, k, oriented=labels.oriented)
        for rate in rates:
            rng = np.random.default_rng(int(rate * 1000))
            wrong = rng.random(len(truth)) < rate
            noisy = np.where(wrong, 1 - truth, truth)
            row: dict[str, Any] = {"label": target, "items": len(truth), "true_noise": float(wrong.mean())}
            started = time.perf_counter()
            estimate = estimate_transition(noisy, neighbours, 2)
            hoc_seconds = time.perf_counter() - started
            for method in ("rank", "vote"):
                started = time.perf_counter()
                found = simifeat(noisy, neighbours, 2, method, estimate)
                row[f"simifeat-{method}"] = {**detection_quality(found.is_issue, wrong),
                                             "seconds": time.perf_counter() - started + hoc_seconds}
                if target == "is_safe" and rate == max(rates):
                    keep[f"simifeat-{method}"] = found.suggested
            row["hoc_noise_rate"] = estimate.noise_rate
            started = time.perf_counter()
            if labels.oriented:
                both = out_of_fold_probabilities(np.concatenate([x, -x]), np.concatenate([noisy, 1 - noisy]), 2)
                probabilities = both[: len(noisy)]
            else:
                probabilities = out_of_fold_probabilities(x, noisy, 2)
            fold_seconds = time.perf_counter() - started
            started = time.perf_counter()
            found, joint = confident_learning(probabilities, noisy)
            row["confident"] = {**detection_quality(found.is_issue, wrong), "noise_rate": float(1 - np.trace(joint)),
                                "seconds": time.perf_counter() - started + fold_seconds}
            started = time.perf_counter()
            theirs = cleanlab_issues(probabilities, noisy)
            if theirs is not None:
                row["cleanlab"] = {**detection_quality(theirs, wrong), "seconds": time.perf_counter() - started + fold_seconds}
            if target == "is_safe" and rate == max(rates):
                keep["confident"] = found.suggested
                if theirs is not None:
                    keep["cleanlab"] = np.where(theirs, 1 - noisy, noisy)
                keep.update(noisy=noisy, truth=truth, features=x)
            rows.append(row)
            line = " | ".join(f"{m} P {row[m]['precision']:.2f} R {row[m]['recall']:.2f} F1 {row[m]['f1']:.2f} ({row[m]['seconds']:.1f} s)"
                              for m in ("simifeat-rank", "simifeat-vote", "confident", "cleanlab") if m in row)
            print(f"  {target:<8} noise {row['true_noise']:.3f}: HOC estimate {row['hoc_noise_rate']:.3f}, "
                  f"confident {row['confident']['noise_rate']:.3f} | {line}", flush=True)
    return rows, keep


def downstream(keep: dict[str, Any], embedder: str = "minilm") -> dict[str, Any]:
    """Moderators (frozen MiniLM + balanced LR) on noisy, cleaned and clean labels, scored on the v1 sample."""
    from sklearn.linear_model import LogisticRegression

    [test] = label_sets(load(str(sample_path(V1))).records, "is_safe")
    x_test = item_features(test, lambda texts: embed_texts(texts, embedder, 256, progress=False))
    y_test = np.array([it.label for it in test.items])  # 1 = unsafe
    out: dict[str, Any] = {"test_responses": len(y_test), "test_unsafe_share": float(y_test.mean())}
    for name in ["noisy", *[m for m in ("simifeat-rank", "simifeat-vote", "confident", "cleanlab") if m in keep], "truth"]:
        labels = keep[name]
        model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(keep["features"], labels)
        predicted = model.predict(x_test)
        hits = int(((predicted == 1) & (y_test == 1)).sum())
        precision = hits / max(int((predicted == 1).sum()), 1)
        recall = hits / max(int((y_test == 1).sum()), 1)
        out[name] = {"f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                     "accuracy": float((predicted == y_test).mean()),
                     "label_errors_left": float((labels != keep["truth"]).mean())}
    lost = out["truth"]["accuracy"] - out["noisy"]["accuracy"]
    for name in ("simifeat-rank", "simifeat-vote", "confident", "cleanlab"):
        if name in out:
            gained = out[name]["accuracy"] - out["noisy"]["accuracy"]
            out[name]["recovered_share_of_loss"] = gained / lost if lost > 0 else None
    print("  " + " | ".join(f"{n} F1 {v['f1']:.3f} acc {v['accuracy']:.3f} (errors left {v['label_errors_left']:.3f})"
                            for n, v in out.items() if isinstance(v, dict)), flush=True)
    return out


def scale_check(n: int, k: int) -> dict[str, Any]:
    """k-NN, HOC and SimiFeat on `n` random 384-dimensional items with 10 % label noise: seconds and peak memory."""
    import resource

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, n)
    x = np.eye(384, dtype=np.float32)[truth] + rng.normal(scale=0.03, size=(n, 384)).astype(np.float32)  # two clean clusters
    noisy = np.where(rng.random(n) < 0.1, 1 - truth, truth)
    started = time.perf_counter()
    neighbours = nearest_neighbours(x, k)
    knn_seconds = time.perf_counter() - started
    estimate = estimate_transition(noisy, neighbours, 2)
    found = simifeat(noisy, neighbours, 2, "rank", estimate)
    out = {"items": n, "knn_seconds": knn_seconds, "total_seconds": time.perf_counter() - started,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "f1": detection_quality(found.is_issue, noisy != truth)["f1"], "noise_rate": estimate.noise_rate}
    print(f"  {n} items: k-NN {out['knn_seconds']:.0f} s, all {out['total_seconds']:.0f} s, peak RSS {out['peak_rss_mib']:.0f} MiB,"
          f" F1 {out['f1']:.2f}, noise estimate {out['noise_rate']:.3f} (true 0.100)", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--embedder", default="minilm", help="sentence encoder of steps 2 and 3 (any encoder folder, e.g. a "
                        "fine-tuned moderator's model folder); step 1 always uses MiniLM")
    parser.add_argument("--only", default="docta,synthetic,downstream,scale", help="steps to run")
    parser.add_argument("--rates", default="0.1,0.2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=int, default=100_000, help="items of the memory/time check on random features (0: skip)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"label audit on {args.data_root} (k = {args.k})", flush=True)
    if cleanlab_issues(np.full((2, 2), 0.5), np.array([0, 1])) is None:
        print(f"  cleanlab not installed (pip install --no-deps --target {DEPS} -r bench/requirements-audit.txt): its column is skipped")
    only = set(args.only.split(","))
    docta = None
    if "docta" in only:
        print("1. against Docta's findings (HH-RLHF, 100 records each):", flush=True)
        docta = docta_agreement(args.data_root, args.k)
    print(f"2. synthetic noise on the realign pairs ({args.embedder} features):", flush=True)
    rows, keep = synthetic(args.data_root, args.k, tuple(float(r) for r in args.rates.split(",")), args.embedder)
    down = None
    if "downstream" in only:
        print("3. downstream: moderators on the noisiest labels, cleaned and clean, on the v1 sample:", flush=True)
        down = downstream(keep, args.embedder)
    scale = None
    if args.scale and "scale" in only:
        print(f"4. scale: {args.scale} random items", flush=True)
        scale = scale_check(args.scale, args.k)
    result = {"docta": docta, "synthetic": rows, "downstream": down, "scale": scale, "seconds": time.perf_counter() - started,
              "targets": {"f1_at_10_percent": 0.7, "noise_rate_within": 0.03, "recovered_share": 0.5}}
    first = next(r for r in rows if r["label"] == "is_safe" and abs(r["true_noise"] - 0.1) < 0.02)
    print(f"targets: SimiFeat-rank F1 at 10 % noise {first['simifeat-rank']['f1']:.2f} (≥ 0.70), HOC estimate "
          f"{first['hoc_noise_rate']:.3f} vs {first['true_noise']:.3f} (±0.03)")
    if down is not None:
        recovered = ", ".join(f"{m} {down[m]['recovered_share_of_loss']:.2f}" for m in ("simifeat-rank", "confident", "cleanlab")
                              if m in down and down[m].get("recovered_share_of_loss") is not None)
        lost = down["truth"]["accuracy"] - down["noisy"]["accuracy"]
        print(f"downstream: the noise cost {lost:+.3f} accuracy, recovered " + (recovered or "n/a (nothing was lost)") + " (≥ 0.5)")
    print(f"total {result['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
