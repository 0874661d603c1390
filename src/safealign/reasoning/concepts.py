"""A concept dictionary: which SAE latents carry each labelled concept, with a threshold each.

A *concept* is a name (a harm category, `unsafe`, `refusal`, a PrOntoQA property), a scope
(`prompt`, `answer` or `conversation`: the tokens it is judged on) and labelled
conversations. Each conversation's feature vector is the SAE code max-pooled over the tokens
of the scope (a latent's strongest firing there).

- `diff` (the default): up to `latents` latents that best separate positives from negatives
  on the training split by AUC − ½ (`separation`, a rank statistic: a latent firing on a
  handful of positives only does not win on its tiny spread), each at least a quarter as
  separating as the best, weighted by (AUC − ½) / std (weights sum to 1); the score is the
  weighted sum of their pooled activations.
- `tree`: a small decision tree (depth ≤ 3, class-balanced) on the 32 latents with the
  largest |AUC − ½|, for concepts that need several latents together; the score is the
  leaf's positive share.
- `auto` fits both and keeps the one with the higher balanced accuracy on the validation split.

The threshold on the score is the one with the best balanced accuracy on the validation split
(never the test split). The steering direction of a concept is always its `diff` latents:
normalise(Σ wᵢ · W_dec[fᵢ]). Beside the dictionary, `fit_probe` trains the usual baseline, a
class-balanced logistic regression on the scope's mean-pooled raw activations, with its
threshold chosen the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from safealign.config import ConfigError
from safealign.reasoning.activations import SCOPES, Activations
from safealign.reasoning.sae import TopKSAE, load_sae

Method = Literal["diff", "tree", "auto"]
DICTIONARY_FILE = "concepts.json"


class ConceptError(ConfigError):
    """A concept that cannot be fitted or a dictionary that cannot be read; the message says which."""


def concept_name(label: str) -> str:
    """A label as an atom of the rule language: lower case, runs of other characters as one '_'."""
    name = re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_")
    if not name or name[0].isdigit():
        name = f"c_{name}"
    return name


def split_of(prompt: str, validation: float, test: float, seed: int = 0) -> str:
    """'train', 'validation' or 'test' from a hash of the prompt: one prompt's conversations share a split."""
    bucket = int.from_bytes(hashlib.blake2b(f"{seed}:{prompt}".encode(), digest_size=8).digest(), "little") / 2**64
    return "test" if bucket < test else ("validation" if bucket < test + validation else "train")


@torch.no_grad()
def pooled_codes(sae: TopKSAE, acts: Activations, scope: str, batch_size: int = 4096) -> Tensor:
    """Each conversation's SAE code max-pooled over its tokens in `scope`, size = (R, L); zeros where the scope is empty."""
    keep = acts.token_mask(scope)
    owners = acts.owners()[keep]
    values = acts.values[keep]
    pooled = torch.zeros(len(acts), sae.cfg.num_latents)
    for start in range(0, len(values), batch_size):
        dense = sae.dense(values[start : start + batch_size]).float()
        index = owners[start : start + batch_size].unsqueeze(1).expand_as(dense)
        pooled.scatter_reduce_(0, index, dense, reduce="amax", include_self=True)
    return pooled


@torch.no_grad()
def mean_pooled(acts: Activations, scope: str) -> Tensor:
    """Each conversation's raw activations averaged over its tokens in `scope`, size = (R, D)."""
    keep = acts.token_mask(scope)
    owners = acts.owners()[keep]
    total = torch.zeros(len(acts), acts.values.size(1)).index_add_(0, owners, acts.values[keep])
    counts = torch.bincount(owners, minlength=len(acts)).clamp_min(1).unsqueeze(1)
    return total / counts


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy) maximising balanced accuracy of `score > threshold`: a midpoint between scores, the lowest on ties."""
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ConceptError("a threshold needs positives and negatives in the validation split")
    values = np.unique(scores)
    cuts = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2]) if len(values) > 1 else np.array([values[0] - 1.0])
    best, best_cut = -1.0, float(cuts[0])
    for cut in cuts:
        predicted = scores > cut
        balanced = 0.5 * (predicted[labels].mean() + (~predicted[~labels]).mean())
        if balanced > best + 1e-12:
            best, best_cut = float(balanced), float(cut)
    return best_cut, best


def detection_metrics(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 of the positive class, accuracy and balanced accuracy."""
    predicted, labels = predicted.astype(bool), labels.astype(bool)
    tp, fp, fn = int((predicted & labels).sum()), int((predicted & ~labels).sum()), int((~predicted & labels).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    tnr = float((~predicted[~labels]).mean()) if (~labels).any() else float("nan")
    tpr = float(predicted[labels].mean()) if labels.any() else float("nan")
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": float((predicted == labels).mean()),
            "balanced_accuracy": 0.5 * (tpr + tnr), "positives": int(labels.sum()), "n": len(labels)}


@dataclass
class Concept:
    """One dictionary entry; `latents`/`weights` are the diff selection (and the steering direction)."""

    name: str
    scope: str
    method: Literal["diff", "tree"]
    latents: list[int]
    weights: list[float]
    threshold: float
    tree: dict[str, list[float | int]] | None = None  # feature (index into tree_latents), threshold, left, right, value
    tree_latents: list[int] = field(default_factory=list)
    validation: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)

    def score(self, pooled: Tensor) -> Tensor:
        """The concept's score for pooled (or per-token) codes, size = (N,)."""
        if self.method == "diff":
            return pooled[:, self.latents].float() @ torch.tensor(self.weights, dtype=torch.float32)
        return torch.from_numpy(tree_score(self.tree or {}, pooled[:, self.tree_latents].float().numpy()))

    def direction(self, sae: TopKSAE) -> Tensor:
        """normalise(Σ wᵢ · W_dec[fᵢ]), size = (D,)."""
        with torch.no_grad():
            vector = (torch.tensor(self.weights).unsqueeze(1) * sae.directions()[self.latents].float()).sum(0)
        return vector / vector.norm().clamp_min(1e-12)


def tree_score(tree: dict[str, list[Any]], features: np.ndarray) -> np.ndarray:
    """The positive share of the leaf each row falls in (a fitted tree written as arrays)."""
    node = np.zeros(len(features), dtype=np.int64)
    left, right = np.asarray(tree["left"]), np.asarray(tree["right"])
    feature, threshold, value = np.asarray(tree["feature"]), np.asarray(tree["threshold"]), np.asarray(tree["value"])
    for _ in range(64):
        inner = left[node] >= 0
        if not inner.any():
            break
        rows = np.nonzero(inner)[0]
        go_left = features[rows, feature[node[rows]]] <= threshold[node[rows]]
        node[rows] = np.where(go_left, left[node[rows]], right[node[rows]])
    return value[node].astype(np.float32)


def _fit_tree(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, list[Any]]:
    from sklearn.tree import DecisionTreeClassifier

    model = DecisionTreeClassifier(max_depth=3, min_samples_leaf=5, class_weight="balanced", random_state=seed).fit(x, y)
    t = model.tree_
    positive = list(model.classes_).index(True) if True in model.classes_ else 0
    counts = t.value[:, 0, :]
    share = counts[:, positive] / counts.sum(1).clip(min=1e-12)
    return {"feature": t.feature.tolist(), "threshold": t.threshold.tolist(), "left": t.children_left.tolist(),
            "right": t.children_right.tolist(), "value": share.tolist()}


def separation(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC − ½ of each column for telling positives from negatives (Mann–Whitney, ties shared), size = (L,).

    A rank statistic, so a latent that fires on a handful of positives and nothing else
    scores about (handful / positives) / 2, not the large standardised difference its tiny
    spread would give it: the chosen latents are the ones that separate most of the class.
    """
    from scipy.stats import rankdata

    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    ranks = rankdata(x, axis=0)
    return (ranks[labels].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg) - 0.5


def fit_concept(name: str, scope: str, pooled: Tensor, labels: np.ndarray, split: np.ndarray,
                method: Method = "auto", latents: int = 8, seed: int = 0) -> Concept:
    """One concept from pooled codes (R, L), labels (R,) bool and the split of each row ('train'/'validation'/'test')."""
    if scope not in SCOPES:
        raise ConceptError(f"{name}: scope must be one of {sorted(SCOPES)}, got {scope!r}")
    x = pooled.float().numpy()
    train, val = split == "train", split == "validation"
    for part, mask in (("training", train), ("validation", val)):
        if labels[mask].all() or not labels[mask].any():
            raise ConceptError(f"{name}: the {part} split needs positives and negatives "
                               f"({int(labels[mask].sum())} of {int(mask.sum())} positive)")
    effect = separation(x[train], labels[train])
    best = float(effect.max())  # up to `latents` latents, each separating at least a quarter as well as the best
    chosen = [int(i) for i in np.argsort(-effect)[:latents] if effect[i] > 0 and effect[i] >= best / 4] or [int(np.argmax(effect))]
    spread = x[train][:, chosen].std(0) + 1e-6
    weights = effect[chosen].clip(min=1e-6) / spread  # on standardised codes: a latent's scale does not set its say
    weights = (weights / weights.sum()).tolist()
    diff = Concept(name, scope, "diff", chosen, weights, 0.0)
    diff.threshold, balanced = best_threshold(diff.score(pooled).numpy()[val], labels[val])
    candidates = [(balanced, 1, diff)]
    if method in ("tree", "auto"):
        wide = [int(i) for i in np.argsort(-np.abs(effect))[:32]]
        tree = Concept(name, scope, "tree", chosen, weights, 0.0, _fit_tree(x[train][:, wide], labels[train], seed), wide)
        tree.threshold, tree_balanced = best_threshold(tree.score(pooled).numpy()[val], labels[val])
        candidates.append((tree_balanced, 0, tree))
    if method == "diff":
        candidates = candidates[:1]
    elif method == "tree":
        candidates = candidates[1:]
    concept = max(candidates, key=lambda c: (c[0], c[1]))[2]
    predicted = concept.score(pooled).numpy() > concept.threshold
    concept.validation = detection_metrics(predicted[val], labels[val])
    test = split == "test"
    if test.any():
        concept.test = detection_metrics(predicted[test], labels[test])
    return concept


def fit_probe(features: Tensor, labels: np.ndarray, split: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The linear-probe baseline: standardised logistic regression (class-balanced), threshold by validation balanced accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = features.float().numpy()
    train, val, test = split == "train", split == "validation", split == "test"
    scaler = StandardScaler().fit(x[train])
    model = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed).fit(scaler.transform(x[train]), labels[train])
    scores = model.decision_function(scaler.transform(x))
    threshold, _ = best_threshold(scores[val], labels[val])
    predicted = scores > threshold
    return {"threshold": float(threshold), "validation": detection_metrics(predicted[val], labels[val]),
            "test": detection_metrics(predicted[test], labels[test]) if test.any() else {}}


@dataclass
class ConceptDictionary:
    """The concepts of one SAE (at one layer of one model); saved as a folder with the SAE beside it."""

    sae: TopKSAE
    concepts: dict[str, Concept]
    model: str
    layer: int
    meta: dict[str, Any] = field(default_factory=dict)

    def detect(self, acts: Activations, names: Sequence[str] | None = None) -> list[dict[str, bool]]:
        """Each conversation's propositions: concept → score above its threshold, on the concept's scope.

        A concept whose scope has no tokens in a conversation (an answer concept before any
        answer) is left out of that conversation's propositions: unknown, not false.
        """
        wanted = list(names) if names is not None else list(self.concepts)
        found: list[dict[str, bool]] = [{} for _ in range(len(acts))]
        by_scope: dict[str, list[str]] = {}
        for name in wanted:
            by_scope.setdefault(self.concepts[name].scope, []).append(name)
        for scope, members in by_scope.items():
            pooled = pooled_codes(self.sae, acts, scope)
            present = torch.bincount(acts.owners()[acts.token_mask(scope)], minlength=len(acts)) > 0
            for name in members:
                holds = self.concepts[name].score(pooled) > self.concepts[name].threshold
                for i in range(len(acts)):
                    if present[i]:
                        found[i][name] = bool(holds[i])
        return found

    @torch.no_grad()
    def token_masks(self, acts: Activations, i: int, names: Sequence[str] | None = None) -> dict[str, list[bool]]:
        """Per token of conversation i (in order), whether each concept's score is above its threshold there (false outside its scope)."""
        lo, hi = int(acts.offsets[i]), int(acts.offsets[i + 1])
        codes = self.sae.dense(acts.values[lo:hi])
        out = {}
        for n in names or self.concepts:
            concept = self.concepts[n]
            inside = torch.isin(acts.scope[lo:hi], torch.tensor(SCOPES[concept.scope], dtype=acts.scope.dtype))
            out[n] = ((concept.score(codes) > concept.threshold) & inside).tolist()
        return out

    def direction(self, name: str) -> Tensor:
        if name not in self.concepts:
            raise ConceptError(f"steer({name}): no concept {name!r} in the dictionary ({', '.join(sorted(self.concepts))})")
        return self.concepts[name].direction(self.sae)

    def save(self, folder: str | Path) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.sae.save(out / "sae")
        payload = {"model": self.model, "layer": self.layer, "sae": "sae", "meta": self.meta,
                   "concepts": {n: asdict(c) for n, c in self.concepts.items()}}
        (out / DICTIONARY_FILE).write_text(json.dumps(payload, indent=2))
        return out


def load_dictionary(folder: str | Path) -> ConceptDictionary:
    root = Path(folder)
    path = root / DICTIONARY_FILE
    if not path.exists():
        raise ConceptError(f"{root}: not a concept dictionary (no {DICTIONARY_FILE}; `safealign reason concepts` writes one)")
    try:
        raw = json.loads(path.read_text())
        concepts = {n: Concept(**c) for n, c in raw["concepts"].items()}
        model, layer, sae_dir = raw["model"], int(raw["layer"]), raw.get("sae", "sae")
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConceptError(f"{path}: not a concept dictionary ({type(error).__name__}: {error})") from None
    return ConceptDictionary(load_sae(root / sae_dir), concepts, model, layer, raw.get("meta", {}))

