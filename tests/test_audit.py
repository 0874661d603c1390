"""Label credibility: k-NN clusterability, HOC, SimiFeat and confident learning, by hand and on synthetic noise."""

from __future__ import annotations

import numpy as np
import pytest

from safealign.audit.credibility import (
    Neighbours,
    confident_learning,
    consensus,
    detection_quality,
    estimate_transition,
    knn_votes,
    nearest_neighbours,
    simifeat,
)


def test_neighbours_by_hand_and_oriented_pairs_vote_flipped():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    nn = nearest_neighbours(x, k=1)
    assert nn.index[:, 0].tolist() == [1, 0, 3, 2] and not nn.flip.any()
    # a pair seen the other way round (its difference vector negated) is the nearest, flipped
    pairs = np.array([[1.0, 0.0], [-1.0, 0.02], [0.0, 1.0]])
    oriented = nearest_neighbours(pairs, k=1, oriented=True)
    assert oriented.index[:2, 0].tolist() == [1, 0] and oriented.flip[:2, 0].all()
    # pair 1 is pair 0 reversed and labelled 1 ("the second is safer"): flipped, it agrees with pair 0's label 0
    assert knn_votes(np.array([0, 1, 0]), oriented, 2)[0].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="k must be between 1"):
        nearest_neighbours(x, k=4)


def test_votes_and_consensus_by_hand():
    nn = Neighbours(index=np.array([[1, 2], [0, 2], [0, 1]]), similarity=np.array([[0.9, 0.1], [0.9, 0.3], [0.1, 0.3]]),
                    flip=np.zeros((3, 2), dtype=bool))
    labels = np.array([0, 0, 1])
    votes = knn_votes(labels, nn, 2)
    assert votes[0] == pytest.approx([0.9, 0.1]) and votes[1] == pytest.approx([0.9 / 1.2, 0.3 / 1.2])
    assert votes[2] == pytest.approx([1.0, 0.0])
    first, second, third = consensus(labels, nn, 2)
    assert first == pytest.approx([2 / 3, 1 / 3])
    # (y0, y1): (0, 0), (0, 0), (1, 0); (y0, y1, y2): (0, 0, 1), (0, 0, 1), (1, 0, 0)
    assert second == pytest.approx(np.array([[2, 0], [1, 0]]) / 3)
    assert third[0, 0, 1] == pytest.approx(2 / 3) and third[1, 0, 0] == pytest.approx(1 / 3) and third.sum() == pytest.approx(1)


def _noisy_clusters(n=1200, noise=0.2, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, n)
    centres = np.eye(8)[:classes] * 4.0
    features = centres[truth] + rng.normal(size=(n, 8))
    flipped = rng.random(n) < noise
    given = np.where(flipped, (truth + rng.integers(1, classes, n)) % classes, truth)
    return features, truth, given, flipped


def test_hoc_recovers_the_noise_rate_and_simifeat_finds_the_flips():
    features, truth, given, flipped = _noisy_clusters()
    nn = nearest_neighbours(features, k=10)
    estimate = estimate_transition(given, nn, 2)
    assert estimate.transition.sum(axis=1) == pytest.approx([1, 1])
    assert abs(estimate.noise_rate - flipped.mean()) < 0.03
    assert np.diag(estimate.transition) == pytest.approx([0.8, 0.8], abs=0.04)
    found = simifeat(given, nn, 2, "rank", estimate)
    quality = detection_quality(found.is_issue, flipped)
    assert quality["f1"] > 0.85 and quality["precision"] > 0.85
    # binary labels: a flag's suggestion is the other label, right exactly when the flag is
    assert (found.suggested[found.is_issue] == truth[found.is_issue]).mean() == pytest.approx(quality["precision"])
    vote = simifeat(given, nn, 2, "vote")
    assert detection_quality(vote.is_issue, flipped)["recall"] > 0.85


def test_three_classes_with_asymmetric_noise():
    rng = np.random.default_rng(3)
    features, truth, _, _ = _noisy_clusters(n=1500, noise=0.0, seed=3, classes=3)
    given = truth.copy()
    moved = (truth == 0) & (rng.random(len(truth)) < 0.3)  # only class 0 is mislabelled, as class 1
    given[moved] = 1
    estimate = estimate_transition(given, nearest_neighbours(features, k=10), 3)
    assert estimate.transition[0, 1] == pytest.approx(0.3, abs=0.05) and estimate.transition[2, 2] > 0.95
    assert estimate.noise_rate == pytest.approx(moved.mean(), abs=0.03)


def test_confident_learning_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1, 1])
    # thresholds: class 0 = mean(0.9, 0.8, 0.3) = 2/3; class 1 = mean(0.8, 0.4) = 0.6
    found, joint = confident_learning(probabilities, labels)
    assert found.is_issue.tolist() == [False, False, True, False, False]  # item 4: 0.6 < 2/3, not confidently class 0
    assert found.suggested.tolist() == [0, 0, 1, 1, 1] and found.confidence[2] == pytest.approx(0.7)
    assert joint.sum() == pytest.approx(1.0) and joint[0, 1] == pytest.approx(1 / 5)


def test_detection_quality_by_hand():
    got = detection_quality(np.array([1, 1, 0, 0], dtype=bool), np.array([1, 0, 1, 0], dtype=bool))
    assert got == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "flagged": 2, "wrong": 2}


# --- labels of records, fixes, the audit end to end ----------------------------------------

from safealign.audit.labels import apply_fix, label_sets  # noqa: E402
from safealign.audit.run import audit_labels, clean_records, issue_rows  # noqa: E402
from safealign.data.records import DualPreferencePair, PreferencePair, QARecord  # noqa: E402


def _pair(**kw):
    base = dict(prompt="p", response_0="a", response_1="b", better_response_id=0, safer_response_id=0,
                is_response_0_safe=True, is_response_1_safe=False, response_1_harm_categories=("Violence",),
                response_0_severity=0, response_1_severity=2, origin="f.jsonl:1")
    return DualPreferencePair(**{**base, **kw})


def test_label_sets_by_hand():
    records = [_pair(), QARecord(prompt="q", response="r", is_safe=True, origin="f.jsonl:2"),
               QARecord(prompt="q2", response="r2", is_safe=None, origin="f.jsonl:3"),
               PreferencePair(prompt="h", chosen="c", rejected="d", origin="g.jsonl:1")]
    [safe] = label_sets(records, "is_safe")
    assert [(i.record, i.field, i.given, i.label) for i in safe.items] == [
        (0, "is_response_0_safe", True, 0), (0, "is_response_1_safe", False, 1), (1, "is_safe", True, 0)]  # unlabelled left out
    [violence] = label_sets(records, "categories")
    assert violence.name == "categories:Violence" and [i.label for i in violence.items] == [0, 1, 0]
    [severity] = label_sets(records, "severity")
    assert [(i.field, i.label) for i in severity.items] == [("response_1_severity", 1)]  # severity 2 is class "2" (index 1)
    [chosen] = label_sets(records, "chosen")
    item = chosen.items[0]
    assert chosen.value_of(item, item.label) == "chosen"  # the shown orientation maps back to the record's own
    assert chosen.value_of(item, 1 - item.label) == "rejected"
    pairs = label_sets([_pair(origin=f"f:{n}") for n in range(200)], "safer", seed=1)[0]
    shown = [i.label for i in pairs.items]
    assert 70 < sum(shown) < 130  # seeded random orientations balance the classes
    assert all(pairs.value_of(i, i.label) == 0 for i in pairs.items)  # and every one maps back to safer_response_id 0
    assert label_sets(records, "better")[0].items[0].given == 0
    assert label_sets([_pair(better_response_id=None)], "better") == []


def test_fixes_keep_the_labels_consistent():
    qa = QARecord(prompt="q", response="r", is_safe=False, harm_categories=("Violence",), severity=2)
    fixed, also = apply_fix(qa, "is_safe", None, True)
    assert (fixed.is_safe, fixed.harm_categories, fixed.severity) == (True, (), 0) and also
    fixed, _ = apply_fix(QARecord(prompt="q", response="r", is_safe=True, severity=0), "is_safe", None, False)
    assert (fixed.is_safe, fixed.severity) == (False, None)
    fixed, also = apply_fix(QARecord(prompt="q", response="r", is_safe=True), "harm_categories", None, ("Privacy", True))
    assert (fixed.is_safe, fixed.harm_categories, also) == (False, ("Privacy",), ["labelled unsafe"])
    # response 0 relabelled unsafe, response 1 safe: the safer response must follow
    fixed, also = apply_fix(apply_fix(_pair(), "is_response_1_safe", 1, True)[0], "is_response_0_safe", 0, False)
    assert (fixed.is_response_0_safe, fixed.is_response_1_safe, fixed.safer_response_id) == (False, True, 1)
    # the order corrected against the labels: the two responses' labels are exchanged
    fixed, also = apply_fix(_pair(), "safer_response_id", None, 1)
    assert (fixed.safer_response_id, fixed.is_response_0_safe, fixed.is_response_1_safe) == (1, False, True)
    assert (fixed.response_0_harm_categories, fixed.response_0_severity) == (("Violence",), 2)
    swapped, _ = apply_fix(PreferencePair(prompt="h", chosen="c", rejected="d"), "chosen", None, "rejected")
    assert (swapped.chosen, swapped.rejected) == ("d", "c")


def test_audit_finds_swapped_pairs_and_clean_repairs_them():
    rng = np.random.default_rng(0)
    n = 400
    safe_dir, unsafe_dir = rng.normal(size=16), rng.normal(size=16)
    texts: dict[str, np.ndarray] = {}
    records, wrong = [], []
    for i in range(n):
        a, b = f"safe answer {i}", f"unsafe answer {i}"
        texts[a] = safe_dir + 0.5 * rng.normal(size=16)
        texts[b] = unsafe_dir + 0.5 * rng.normal(size=16)
        flip = i % 10 == 0  # 10 % of the pairs: the order (and with it the safety labels) wrong
        wrong.append(flip)
        records.append(_pair(prompt=f"p{i}", response_0=a, response_1=b, safer_response_id=1 if flip else 0,
                             is_response_0_safe=not flip, is_response_1_safe=flip, response_1_harm_categories=(),
                             response_0_severity=None, response_1_severity=None, origin=f"f.jsonl:{i + 1}"))

    def embed(batch):  # the rendered dialogue ends "ASSISTANT: <response>"
        return np.stack([texts[t.rsplit("ASSISTANT: ", 1)[-1]] for t in batch])

    audit = audit_labels(records, "safer", k=10, embed=embed)
    rows = issue_rows(audit, records)
    flagged = np.array([r["is_issue"] for r in rows])
    assert detection_quality(flagged, np.array(wrong))["f1"] > 0.9
    assert abs(audit.sets[0].estimate.noise_rate - 0.1) < 0.03
    cleaned, report = clean_records(records, rows, mode="relabel")
    assert report.read == report.kept + report.relabelled + report.dropped == n
    assert sum(r.safer_response_id == 0 and r.is_response_0_safe for r in cleaned) > 0.97 * n
    assert all(r.meta["audit"][0]["field"] == "safer_response_id" for r in cleaned if r.meta and "audit" in r.meta)
    kept, dropped = clean_records(records, rows, min_confidence=0.99, mode="drop")
    assert dropped.read == dropped.kept + dropped.dropped and len(kept) == dropped.kept


def test_audit_cli_labels_then_clean(tmp_path, monkeypatch):
    import json

    from conftest import DATA, run_cli
    from tiny import tiny_bert

    monkeypatch.setenv("SAFEALIGN_CACHE", str(tmp_path / "cache"))
    encoder = tiny_bert(tmp_path / "encoder")
    v1 = str(DATA / "pku_saferlhf/v1_test_sample.jsonl")
    out = tmp_path / "audit"
    proc = run_cli("audit", "labels", v1, "--label", "is_safe", "--embedder", str(encoder), "--k", "5", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is_safe audit (simifeat-rank, k = 5" in proc.stdout and "T (is_safe, rows true, columns given)" in proc.stdout
    rows = [json.loads(line) for line in (out / "label_issues.jsonl").read_text().splitlines()]
    assert len(rows) == 200 and {r["field"] for r in rows} == {"is_response_0_safe", "is_response_1_safe"}
    assert all(r["source"] == v1 and isinstance(r["line"], int) and 0 <= r["confidence"] <= 1 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flagged"] == sum(r["is_issue"] for r in rows) and summary["sets"][0]["items"] == 200
    page = (out / "report.html").read_text()
    assert "<h2>is_safe</h2>" in page and "data:image/png;base64," in page
    assert (tmp_path / "cache" / "embeddings" / "embeddings.sqlite").is_file()  # the second audit embeds nothing
    again = run_cli("audit", "labels", v1, "--method", "confident", "--embedder", str(encoder), "--out", str(tmp_path / "cl"))
    assert again.returncode == 0 and "embedding" not in again.stderr, again.stderr
    # every flagged row forced on, so clean has work: the cleaned file must validate and add up
    (out / "forced.jsonl").write_text("".join(json.dumps({**r, "is_issue": r["line"] <= 10}) + "\n" for r in rows))
    cleaned = tmp_path / "clean.jsonl"
    proc = run_cli("audit", "clean", v1, "--issues", str(out / "forced.jsonl"), "--to", str(cleaned))
    assert proc.returncode == 0, proc.stderr
    assert "read 100 | kept 90 | relabelled 10 | dropped 0 | issue rows naming no record 0" in proc.stdout
    assert run_cli("data", "validate", str(cleaned)).returncode == 0  # the fixes keep every record consistent
    fixed = [json.loads(line) for line in cleaned.read_text().splitlines()]
    assert sum("audit" in (r.get("meta") or {}) for r in fixed) == 10
    dropped = run_cli("audit", "clean", v1, "--issues", str(out / "forced.jsonl"), "--to", str(tmp_path / "d.jsonl"),
                      "--mode", "drop")
    assert "read 100 | kept 90 | relabelled 0 | dropped 10" in dropped.stdout
    (out / "bad.jsonl").write_text('{"source": "x"}\n')
    bad = run_cli("audit", "clean", v1, "--issues", str(out / "bad.jsonl"), "--to", str(tmp_path / "e.jsonl"))
    assert bad.returncode == 2 and "bad.jsonl:1: line: missing" in bad.stderr
    wrong = run_cli("audit", "labels", v1, "--label", "rating", "--embedder", str(encoder), "--out", str(tmp_path / "r"))
    assert wrong.returncode == 2 and "no record has a 'rating' label" in wrong.stderr


def test_red_team_attempts_load_with_their_ratings(shared_data):
    from safealign.data.load import load

    loaded = load(str(shared_data / "hh_rlhf/docta/red-team-attempts_red_team_attempts_docta_100.jsonl.gz"))
    assert loaded.report.formats and set(loaded.report.formats.values()) == {"hh-rlhf-red-team"}
    assert loaded.report.kept == 100 and all(r.is_safe is None and 0 <= r.meta["rating"] <= 4 for r in loaded.records)
    [ratings] = label_sets(loaded.records, "rating")
    assert ratings.classes == ["0", "1", "2", "3", "4"] and len(ratings.items) == 100
    assert all("suggest_rating" in r.meta for r in loaded.records)  # Docta's suggestion kept for comparison


def test_cached_embeddings_follow_the_weights(tmp_path):
    from tiny import tiny_bert

    from safealign.audit.run import embed_texts, encoder_identity

    encoder = tiny_bert(tmp_path / "encoder", seed=0)
    first = embed_texts(["a b", "c d"], str(encoder), 32, tmp_path / "cache", progress=False)
    assert np.allclose(embed_texts(["c d"], str(encoder), 32, tmp_path / "cache", progress=False), first[1:])
    before = encoder_identity(str(encoder), 32)
    tiny_bert(tmp_path / "encoder", seed=1)  # retrained in place: other weights, same folder
    assert encoder_identity(str(encoder), 32) != before and encoder_identity(str(encoder), 64) != encoder_identity(str(encoder), 32)
    again = embed_texts(["a b", "c d"], str(encoder), 32, tmp_path / "cache", progress=False)
    assert not np.allclose(again, first)  # the old vectors were not reused
