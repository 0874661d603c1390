"""The judges on real data: cost models, response moderators and a prompt moderator, against their floors.

Trains through safealign's own paths (`train_score_model(cfg, "cost")`, `train_moderator`) on
the larger real data of a data root (`../shared/data` by default; see its README):

- cost models on the PKU-SafeRLHF realign pairs (10,270 safety-labelled responses, no
  helpfulness order) plus the bundled v0 pairs;
- response moderators on the same responses plus BeaverTails unsafe QA (both backends:
  frozen MiniLM embeddings + heads, and MiniLM fine-tuned end to end);
- a prompt moderator on the BeaverTails prompt labels (2,019 prompts).

Every figure is on data no candidate trained on: the bundled PKU-SafeRLHF v1 sample
(another generator's answers; its prompts are removed from the training data first), and
a prompt-disjoint validation split. Floors printed beside: the majority label, frozen
MiniLM embeddings + logistic regression (cost, prompt moderator), and TF-IDF + logistic
regression trained on the same data in the same run (response moderator).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/judges.py [--data-root ../shared/data] [--only cost,moderation,prompt]
        [--cost-steps 600] [--moderation-steps 1500] [--prompt-steps 600] [--threads 2] [--json FILE]

Runs in the main venv. Needs `safealign models install minilm`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import wait_for_quiet  # noqa: F401 (bench/ is on the path: see bench/common.py; sets offline mode)

import torch

from safealign.assets import sample_path
from safealign.data.load import load, split_train_validation
from safealign.data.records import DualPreferencePair, QARecord, dialogue
from safealign.data.write import write_records
from safealign.evaluate.preference import evaluate_preference
from safealign.models.score import ScoreModel, load_score_tokenizer
from safealign.moderation.evaluate import figures, score_baseline, score_moderator
from safealign.moderation.model import Moderator, moderation_text
from safealign.moderation.train import ModerationConfig, qa_records, train_moderator
from safealign.train.score import ScoreTrainConfig, train_score_model

REALIGN = "pku_saferlhf/realign_dpo_5135.json"
PROMPTS = "beavertails/prompts_30k_test_2019.json"
V1 = "pku_saferlhf/v1_test_sample.jsonl"
V0 = "pku_saferlhf/v0_pairs_32.json"
UNSAFE_QA = "beavertails/unsafe_qa_140.csv"
TARGETS = {"cost_sign": 0.85, "cost_pair": 0.75, "moderation_f1": 0.80, "moderation_accuracy": 0.78,
           "moderation_margin": 0.05, "prompt_f1": 0.80}


def training_pairs(root: Path, scratch: Path) -> Path:
    """The realign pairs without any prompt of the v1 sample (the held-out test), as a canonical file in scratch."""
    test_prompts = {r.prompt for r in load(str(sample_path(V1))).records}
    pairs = [r for r in load(str(root / REALIGN)).records if r.prompt not in test_prompts]
    path = scratch / "realign_train.jsonl"
    write_records(pairs, path)  # a scratch copy for this run only (never committed)
    return path


def sentence_features(texts: list[str]) -> Any:
    """Frozen all-MiniLM-L6-v2 embeddings (mean-pooled, L2-normalised), as the embedding moderator reads them."""
    from safealign.models.registry import resolve_model
    from safealign.moderation.model import SentenceEncoder

    encoder = SentenceEncoder(resolve_model("minilm"), 256).eval()
    with torch.no_grad():
        return torch.cat([encoder(texts[i : i + 64]) for i in range(0, len(texts), 64)]).numpy()


def embedding_floor(train: list[QARecord], test: list[QARecord]) -> list[float]:
    """p(unsafe) of frozen MiniLM embeddings + class-balanced logistic regression, trained on `train`."""
    from sklearn.linear_model import LogisticRegression

    x_train = sentence_features([moderation_text(dialogue(r), r.response) for r in train])
    x_test = sentence_features([moderation_text(dialogue(r), r.response) for r in test])
    clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x_train, [int(not r.is_safe) for r in train])
    return clf.predict_proba(x_test)[:, 1].tolist()


def pair_and_sign(scores: list[float], pairs: list[DualPreferencePair]) -> dict[str, float]:
    """Safer-pair accuracy (the safer response scores lower) and sign accuracy (score > 0 iff unsafe) of 2 scores per pair."""
    right = signs = labelled = 0
    for n, pair in enumerate(pairs):
        s = scores[2 * n : 2 * n + 2]
        right += s[pair.safer_response_id] < s[1 - pair.safer_response_id]
        for i in (0, 1):
            if pair.is_safe(i) is not None:
                labelled += 1
                signs += (s[i] > 0) == (not pair.is_safe(i))
    return {"pair_accuracy": right / len(pairs), "sign_accuracy": signs / labelled if labelled else float("nan")}


def majority(labels: list[bool]) -> float:
    return max(sum(labels), len(labels) - sum(labels)) / len(labels)


def bench_cost(args: argparse.Namespace, train_file: Path, scratch: Path) -> dict[str, Any]:
    test = [r for r in load(str(sample_path(V1))).records if isinstance(r, DualPreferencePair)]
    started = time.perf_counter()
    cfg = ScoreTrainConfig(model="minilm", data=[str(train_file), str(sample_path(V0))], validation_split=0.1,
                           output_dir=str(scratch / "cost"), max_steps=args.cost_steps, per_device_batch_size=8,
                           max_length=256, learning_rate=5e-5, warmup_ratio=0.05, eval_every=0, save_every=0,
                           num_threads=args.threads, seed=args.seed)
    cfg.validate()
    final = train_score_model(cfg, "cost")
    seconds = time.perf_counter() - started
    model_dir = scratch / "cost" / "model"
    report = evaluate_preference(ScoreModel.from_pretrained(model_dir), load_score_tokenizer(model_dir), test, 256, 16)
    # the floor: frozen embeddings + logistic regression on the same training responses; cost = logit(p) (> 0 iff p > 0.5)
    train_qa = qa_records(load([str(train_file), str(sample_path(V0))]).records)
    train_qa, _ = split_train_validation(train_qa, 0.1, args.seed)
    test_qa = qa_records(test)
    p = embedding_floor(train_qa, test_qa)
    logits = [float(torch.logit(torch.tensor(min(max(x, 1e-6), 1 - 1e-6)))) for x in p]
    floor = pair_and_sign(logits, test)
    labels = [r.is_safe for r in test_qa]
    return {"model": {"pair_accuracy": report.accuracy, "sign_accuracy": report.accuracy_sign,
                      "validation_pair_accuracy": final.get("eval/accuracy"),
                      "validation_sign_accuracy": final.get("eval/accuracy_sign"), "train_seconds": seconds},
            "embedding_lr": floor, "majority_sign": majority(labels), "test_pairs": len(test),
            "test_responses": len(test_qa)}


def bench_moderation(args: argparse.Namespace, train_file: Path, scratch: Path) -> dict[str, Any]:
    data = [str(train_file), str(sample_path(V0)), str(sample_path(UNSAFE_QA))]
    test = qa_records(load(str(sample_path(V1))).records)
    out: dict[str, Any] = {"test_responses": len(test), "test_unsafe": sum(not r.is_safe for r in test),
                           "majority_accuracy": majority([r.is_safe for r in test])}
    for backend, steps, lr in (("embedding", args.moderation_steps, 5e-3), ("finetune", args.finetune_steps, 5e-5)):
        if steps <= 0:
            continue
        started = time.perf_counter()
        cfg = ModerationConfig(model="minilm", backend=backend, data=data, validation_split=0.1,
                               output_dir=str(scratch / f"moderation-{backend}"), max_steps=steps,
                               per_device_batch_size=32 if backend == "embedding" else 16, learning_rate=lr,
                               warmup_ratio=0.0 if backend == "embedding" else 0.05, max_length=256, eval_every=0,
                               save_every=0, num_threads=args.threads, seed=args.seed, threshold_rule=args.threshold_rule)
        cfg.validate()
        train_moderator(cfg)
        seconds = time.perf_counter() - started
        moderator = Moderator.load(scratch / f"moderation-{backend}" / "model")
        result = figures(score_moderator(moderator, test), test, moderator.meta.taxonomy)
        out[backend] = {"f1": result["unsafe"]["f1"], "accuracy": result["unsafe"]["accuracy"],
                        "precision": result["unsafe"]["precision"], "recall": result["unsafe"]["recall"],
                        "threshold": moderator.meta.threshold, "train_seconds": seconds}
    train_records, _ = split_train_validation(load(data).records, 0.1, args.seed)
    train_qa = qa_records(train_records)
    baseline = figures(score_baseline(train_qa, test, "pku-saferlhf"), test, "pku-saferlhf")
    out["tfidf_lr"] = {"f1": baseline["unsafe"]["f1"], "accuracy": baseline["unsafe"]["accuracy"],
                       "precision": baseline["unsafe"]["precision"], "recall": baseline["unsafe"]["recall"]}
    return out


def bench_prompt(args: argparse.Namespace, root: Path, scratch: Path) -> dict[str, Any]:
    from safealign.moderation.metrics import binary_scores

    records = load(str(root / PROMPTS)).records
    # By prompt; another seed than the moderator's own validation split inside the training share:
    # the same seed would hash every remaining prompt above the smaller share and leave it empty.
    train, held_out = split_train_validation(records, 0.2, args.seed + 1)
    train_file, test_file = scratch / "prompts_train.jsonl", scratch / "prompts_test.jsonl"
    write_records(train, train_file)
    write_records(held_out, test_file)
    started = time.perf_counter()
    cfg = ModerationConfig(model="minilm", backend="embedding", taxonomy="beavertails", data=[str(train_file)],
                           validation_split=0.15, output_dir=str(scratch / "prompt-moderation"), max_steps=args.prompt_steps,
                           per_device_batch_size=32, learning_rate=5e-3, warmup_ratio=0.0, max_length=128, eval_every=0,
                           save_every=0, num_threads=args.threads, seed=args.seed, threshold_rule=args.threshold_rule)
    cfg.validate()
    train_moderator(cfg)
    seconds = time.perf_counter() - started
    moderator = Moderator.load(scratch / "prompt-moderation" / "model")
    verdicts = moderator.predict_prompts([dialogue(r) for r in held_out])
    labels = [int(not r.is_safe) for r in held_out]
    model = binary_scores([v.unsafe_probability for v in verdicts], labels, moderator.meta.threshold)
    test_qa, train_qa = qa_records(held_out), qa_records(train)
    floor = binary_scores(embedding_floor(train_qa, test_qa), labels, 0.5)
    return {"model": {**{k: model[k] for k in ("f1", "accuracy", "precision", "recall")},
                      "threshold": moderator.meta.threshold, "judges": moderator.meta.judges, "train_seconds": seconds},
            "embedding_lr": {k: floor[k] for k in ("f1", "accuracy", "precision", "recall")},
            "train_prompts": len(train), "test_prompts": len(held_out), "test_unsafe": sum(labels)}


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--only", default="cost,moderation,prompt")
    parser.add_argument("--cost-steps", type=int, default=600, help="cost-model steps of 8 pairs")
    parser.add_argument("--moderation-steps", type=int, default=1500, help="embedding-backend moderator steps of 32")
    parser.add_argument("--finetune-steps", type=int, default=600, help="fine-tuned MiniLM moderator steps of 16 (0: skip)")
    parser.add_argument("--prompt-steps", type=int, default=600, help="prompt-moderator steps of 32")
    parser.add_argument("--threshold-rule", default="youden")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if not (args.data_root / REALIGN).is_file():
        raise SystemExit(f"{args.data_root}: no {REALIGN}; pass --data-root (see ../shared/data/README.md)")
    print(f"1-minute load before: {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-judges-") as tmp:
        scratch = Path(tmp)
        train_file = training_pairs(args.data_root, scratch)
        only = set(args.only.split(","))
        if "cost" in only:
            results["cost"] = bench_cost(args, train_file, scratch)
        if "moderation" in only:
            results["moderation"] = bench_moderation(args, train_file, scratch)
        if "prompt" in only:
            results["prompt"] = bench_prompt(args, args.data_root, scratch)
    print()
    if "cost" in results:
        c = results["cost"]
        print(f"cost model on the v1 sample ({c['test_pairs']} pairs, {c['test_responses']} responses; majority sign {_f(c['majority_sign'])})")
        print(f"  MiniLM fine-tuned: pair {_f(c['model']['pair_accuracy'])} (target {TARGETS['cost_pair']}), "
              f"sign {_f(c['model']['sign_accuracy'])} (target {TARGETS['cost_sign']}); prompt-disjoint validation: pair "
              f"{_f(c['model']['validation_pair_accuracy'])}, sign {_f(c['model']['validation_sign_accuracy'])}; "
              f"{c['model']['train_seconds']:.0f} s")
        print(f"  floor, frozen MiniLM + LR: pair {_f(c['embedding_lr']['pair_accuracy'])}, sign {_f(c['embedding_lr']['sign_accuracy'])}")
    if "moderation" in results:
        m = results["moderation"]
        print(f"response moderator on the v1 sample ({m['test_responses']} responses, {m['test_unsafe']} unsafe; "
              f"majority accuracy {_f(m['majority_accuracy'])})")
        for name in ("embedding", "finetune", "tfidf_lr"):
            if name in m:
                r = m[name]
                extra = f", threshold {r['threshold']:.3f}, {r['train_seconds']:.0f} s" if "threshold" in r else ""
                print(f"  {name:<10} F1 {_f(r['f1'])} accuracy {_f(r['accuracy'])} precision {_f(r['precision'])} "
                      f"recall {_f(r['recall'])}{extra}")
        print(f"  targets: F1 >= {TARGETS['moderation_f1']}, accuracy >= {TARGETS['moderation_accuracy']}, "
              f"F1 >= TF-IDF + {TARGETS['moderation_margin']}")
    if "prompt" in results:
        p = results["prompt"]
        print(f"prompt moderator on {p['test_prompts']} held-out BeaverTails prompts ({p['test_unsafe']} unsafe; trained on {p['train_prompts']})")
        print(f"  MiniLM embeddings + heads: F1 {_f(p['model']['f1'])} accuracy {_f(p['model']['accuracy'])} "
              f"(target F1 {TARGETS['prompt_f1']}), threshold {p['model']['threshold']:.3f}, {p['model']['train_seconds']:.0f} s")
        print(f"  floor, frozen MiniLM + LR: F1 {_f(p['embedding_lr']['f1'])} accuracy {_f(p['embedding_lr']['accuracy'])}")
    print(f"1-minute load after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
