"""How credible a set of labels is, without training a model on them (and with one, for reference).

Every function here works on a feature matrix (one row per item, e.g. sentence embeddings)
and integer labels 0..K-1; nothing reads files. The methods are those of the Docta study
("Unmasking and Improving Data Credibility", Zhu et al. 2023) and its two building blocks,
written here from the papers:

- **k-NN label clusterability** (Zhu, Song & Liu 2021, "Clusterability as an alternative to
  anchor points"): an item and its nearest neighbours in a good feature space share a true
  label, so their *noisy* labels are draws from the same row of the noise transition matrix
  T (T[i, j] = P(given label j | true label i)).
- **HOC**, high-order consensus: from the labels of each item and its two nearest
  neighbours, the first-, second- and third-order agreement frequencies are matched to
  what a clean prior p and a T predict (sum_i p_i T_ij, sum_i p_i T_ij T_il, ...); T and p
  are fitted by gradient descent on that squared error, T's rows on the simplex and
  initialised diagonal-dominant (Docta's recipe).
- **SimiFeat** (Zhu, Dong & Liu 2022, "Detecting corrupted labels without training a model
  to predict"): a similarity-weighted vote of the k nearest neighbours' labels scores each
  item's given label. `rank` flags, in each class, the lowest-scoring share that HOC says is
  wrong (P(true ≠ j | given j) = 1 − p_j T_jj / sum_i p_i T_ij; 1 − T_jj under a uniform
  prior); `vote` flags every item whose vote's winner is another label.
- **Confident learning** (Northcutt, Jiang & Chuang 2021; cleanlab is its reference
  implementation, compared in `bench/label_audit.py`): out-of-fold predicted probabilities
  of a classifier, per-class thresholds t_j = the mean probability of class j over the
  items labelled j, the confident joint, and an item is an issue when another class clears
  its threshold with the highest probability.

Pair-order labels (which of two responses is safer or better) are antisymmetric: swapping
the responses flips the label. Their feature is the difference of the two responses'
embeddings, and `oriented=True` makes a neighbour found at negative similarity vote with its
label flipped (distance by |cos|), so the two orientations of one pair agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Neighbours:
    """The k nearest neighbours of every item (itself excluded)."""

    index: np.ndarray  # size = (N, k), int
    similarity: np.ndarray  # size = (N, k), cosine similarity in [-1, 1] (|cos| ranks them when oriented)
    flip: np.ndarray  # size = (N, k), bool: the neighbour votes with its label flipped (oriented, cos < 0)


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def nearest_neighbours(features: np.ndarray, k: int, oriented: bool = False, batch_size: int = 1024) -> Neighbours:
    """Cosine k-NN of every row among the others, in batches of rows (memory O(batch × N))."""
    x = normalise(features)
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and the number of items - 1 ({n - 1}), got {k}")
    index = np.empty((n, k), dtype=np.int64)
    similarity = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        sims = x[start:stop] @ x.T  # size = (B, N)
        rank = np.abs(sims) if oriented else sims.copy()
        rank[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # never one's own neighbour
        top = np.argpartition(-rank, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(rank, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        index[start:stop] = top
        similarity[start:stop] = np.take_along_axis(sims, top, axis=1)
    flip = (similarity < 0) if oriented else np.zeros_like(similarity, dtype=bool)
    return Neighbours(index, similarity, flip)


def neighbour_labels(labels: np.ndarray, neighbours: Neighbours, num_classes: int) -> np.ndarray:
    """The labels of each item's neighbours, size = (N, k); flipped ones (binary labels only) as 1 − label."""
    found = np.asarray(labels)[neighbours.index]
    if neighbours.flip.any():
        if num_classes != 2:
            raise ValueError("oriented neighbours need binary (pair-order) labels")
        found = np.where(neighbours.flip, 1 - found, found)
    return found


def knn_votes(labels: np.ndarray, neighbours: Neighbours, num_classes: int) -> np.ndarray:
    """Similarity-weighted label votes of the neighbours, size = (N, K), rows summing to 1."""
    found = neighbour_labels(labels, neighbours, num_classes)
    weights = np.maximum(np.abs(neighbours.similarity), 1e-6)
    votes = np.zeros((found.shape[0], num_classes), dtype=np.float64)
    np.add.at(votes, (np.repeat(np.arange(found.shape[0]), found.shape[1]), found.ravel()), weights.ravel())
    return votes / votes.sum(axis=1, keepdims=True)


def consensus(labels: np.ndarray, neighbours: Neighbours, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical first-, second- and third-order consensus of (item, 1st neighbour, 2nd neighbour) labels.

    first[j] = P(y0 = j); second[j, l] = P(y0 = j, y1 = l); third[j, l, m] = P(y0 = j, y1 = l, y2 = m).
    """
    if neighbours.index.shape[1] < 2:
        raise ValueError("HOC needs at least 2 neighbours per item")
    y = np.asarray(labels)
    found = neighbour_labels(y, neighbours, num_classes)
    k = num_classes
    first = np.bincount(y, minlength=k) / len(y)
    second = np.zeros((k, k))
    np.add.at(second, (y, found[:, 0]), 1.0)
    third = np.zeros((k, k, k))
    np.add.at(third, (y, found[:, 0], found[:, 1]), 1.0)
    return first, second / len(y), third / len(y)


@dataclass
class NoiseEstimate:
    """HOC's estimate: T[i, j] = P(given j | true i), the clean prior p, and the share of wrong labels."""

    transition: np.ndarray  # size = (K, K), rows sum to 1
    prior: np.ndarray  # size = (K,)
    noise_rate: float  # 1 − sum_i p_i T_ii
    loss: float  # the final consensus-matching error

    def wrong_given(self) -> np.ndarray:
        """P(true label ≠ j | given label j) for every class j (Bayes on T and p)."""
        given = self.prior @ self.transition  # P(given j)
        right = self.prior * np.diag(self.transition)
        return 1.0 - np.divide(right, given, out=np.ones_like(given), where=given > 0)


def estimate_transition(labels: np.ndarray, neighbours: Neighbours, num_classes: int, steps: int = 1500,
                        lr: float = 0.1, init_diagonal: float = 0.9, seed: int = 0) -> NoiseEstimate:
    """HOC: fit T and p so that the consensus they predict matches the empirical one (first to third order)."""
    import torch

    first, second, third = (torch.tensor(a, dtype=torch.float64) for a in consensus(labels, neighbours, num_classes))
    k = num_classes
    generator = torch.Generator().manual_seed(seed)
    off = (1.0 - init_diagonal) / max(k - 1, 1)
    start = torch.full((k, k), off, dtype=torch.float64) + torch.eye(k, dtype=torch.float64) * (init_diagonal - off)
    t_logits = (start.log() + 0.01 * torch.randn(k, k, generator=generator, dtype=torch.float64)).requires_grad_()
    p_logits = torch.zeros(k, dtype=torch.float64).requires_grad_()
    optimiser = torch.optim.Adam([t_logits, p_logits], lr=lr)

    def loss_of() -> torch.Tensor:
        t, p = t_logits.softmax(dim=1), p_logits.softmax(dim=0)
        model_first = p @ t
        model_second = torch.einsum("i,ij,il->jl", p, t, t)
        model_third = torch.einsum("i,ij,il,im->jlm", p, t, t, t)
        return ((model_first - first) ** 2).sum() + ((model_second - second) ** 2).sum() + ((model_third - third) ** 2).sum()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # K × K tensors: more threads only add overhead
    try:
        for _ in range(steps):
            optimiser.zero_grad()
            loss = loss_of()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        t, p = t_logits.softmax(dim=1).numpy(), p_logits.softmax(dim=0).numpy()
        final = float(loss_of())
    return NoiseEstimate(t, p, float(1.0 - (p * np.diag(t)).sum()), final)


@dataclass
class Detection:
    """Per item: the score of its given label, whether it is flagged, the suggested label and its confidence."""

    score: np.ndarray  # size = (N,): the vote share (or probability) of the given label
    is_issue: np.ndarray  # size = (N,), bool
    suggested: np.ndarray  # size = (N,): the most likely label (the given one when not flagged)
    confidence: np.ndarray  # size = (N,): the vote share (or probability) of the suggested label


def simifeat(labels: np.ndarray, neighbours: Neighbours, num_classes: int, method: str = "rank",
             estimate: NoiseEstimate | None = None) -> Detection:
    """SimiFeat detection from the neighbours' votes: `rank` (needs HOC's estimate) or `vote`."""
    y = np.asarray(labels)
    votes = knn_votes(y, neighbours, num_classes)
    score = votes[np.arange(len(y)), y]
    winner = votes.argmax(axis=1)
    if method == "vote":
        is_issue = (winner != y) & (votes.max(axis=1) > score)
    elif method == "rank":
        if estimate is None:
            raise ValueError("rank needs the noise estimate (estimate_transition)")
        is_issue = np.zeros(len(y), dtype=bool)
        wrong = estimate.wrong_given()
        for j in range(num_classes):
            members = np.flatnonzero(y == j)
            count = int(round(wrong[j] * len(members)))
            if count:
                lowest = members[np.argsort(score[members], kind="stable")[:count]]
                is_issue[lowest] = True
        is_issue &= winner != y  # a flagged item whose neighbours agree with it keeps its label
    else:
        raise ValueError(f"method must be rank or vote, got {method!r}")
    suggested = np.where(is_issue, winner, y)
    return Detection(score, is_issue, suggested, votes[np.arange(len(y)), suggested])


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5,
                              seed: int = 0) -> np.ndarray:
    """Class probabilities of a logistic regression for each item from the folds it was not trained on, size = (N, K)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x, y = normalise(features), np.asarray(labels)
    probabilities = np.zeros((len(y), num_classes))
    smallest = np.bincount(y, minlength=num_classes)
    folds = max(2, min(folds, int(smallest[smallest > 0].min())))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        model = LogisticRegression(max_iter=2000, C=1.0).fit(x[train], y[train])
        probabilities[np.ix_(test, model.classes_)] = model.predict_proba(x[test])
    return probabilities


def confident_learning(probabilities: np.ndarray, labels: np.ndarray) -> tuple[Detection, np.ndarray]:
    """Confident learning on out-of-fold probabilities: the detection and the calibrated joint of (given, true)."""
    p, y = np.asarray(probabilities), np.asarray(labels)
    n, k = p.shape
    thresholds = np.array([p[y == j, j].mean() if (y == j).any() else 1.0 for j in range(k)])
    above = p >= thresholds  # size = (N, K)
    masked = np.where(above, p, -np.inf)
    confident = masked.argmax(axis=1)
    has = above.any(axis=1)
    joint = np.zeros((k, k))
    np.add.at(joint, (y[has], confident[has]), 1.0)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    row = joint.sum(axis=1, keepdims=True)
    joint = np.divide(joint, row, out=np.zeros_like(joint), where=row > 0) * counts[:, None]  # calibrated to the label counts
    joint /= max(joint.sum(), 1.0)
    is_issue = has & (confident != y)
    suggested = np.where(is_issue, confident, y)
    return Detection(p[np.arange(n), y], is_issue, suggested, p[np.arange(n), suggested]), joint


def detection_quality(flagged: np.ndarray, truly_wrong: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of flags against known wrong labels."""
    flagged, truly_wrong = np.asarray(flagged, dtype=bool), np.asarray(truly_wrong, dtype=bool)
    hits = int((flagged & truly_wrong).sum())
    precision = hits / flagged.sum() if flagged.any() else 0.0
    recall = hits / truly_wrong.sum() if truly_wrong.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "flagged": int(flagged.sum()),
            "wrong": int(truly_wrong.sum())}
