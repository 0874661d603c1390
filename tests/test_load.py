"""Reading sources: bad input, accounting, mixtures, hub path, splits, round trips."""

from __future__ import annotations

import gzip
import json
import warnings

import pytest
from conftest import write_jsonl

from safealign.data.derive import derive, pair_to_preference, pair_to_qa
from safealign.data.errors import DataError
from safealign.data.load import load, parse_spec, split_train_validation, take_proportion, write_rejects
from safealign.data.write import write_records

GOOD = {
    "prompt": "How do I pick a lock?",
    "response_0": "Use a tension wrench and a pick.",
    "response_1": "I can't help with breaking into places.",
    "is_response_0_safe": False,
    "is_response_1_safe": True,
    "better_response_id": 0,
    "safer_response_id": 1,
}


def test_every_kind_of_bad_line_is_named_and_counted(tmp_path):
    lines = [
        GOOD,  # 1 ok
        '{"prompt": "broken",',  # 2 invalid JSON
        {**GOOD, "prompt": "ids", "better_response_id": 3},  # 3 id not 0/1
        {**GOOD, "prompt": "types", "is_response_0_safe": "yes"},  # 4 wrong type
        {k: v for k, v in GOOD.items() if k != "safer_response_id"},  # 5 missing field
        {**GOOD, "prompt": "unknown", "note": "x"},  # 6 unknown field
        {**GOOD, "prompt": "inconsistent", "safer_response_id": 0},  # 7 safer is unsafe, other safe
        "[1, 2]",  # 8 not an object
        {**GOOD, "prompt": "fine too"},  # 9 ok
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with open(path, "ab") as out:
        out.write(b'{"prompt": "\xff\xfe bad bytes"}\n')  # 10 invalid UTF-8
    with pytest.raises(DataError) as err:
        load(str(path))
    assert f"{path}:2: invalid JSON" in str(err.value)
    loaded = load(str(path), strict=False)
    report = loaded.report
    assert (report.read, report.kept, report.rejected) == (10, 2, 8)
    assert report.read == report.kept + report.rejected
    got = {(r.line, r.field) for r in report.rejections}
    assert got == {
        (2, "-"),
        (3, "better_response_id"),
        (4, "is_response_0_safe"),
        (5, "safer_response_id"),
        (6, "note"),
        (7, "safer_response_id"),
        (8, "-"),
        (10, "-"),
    }
    reasons = {r.line: r.reason for r in report.rejections}
    assert reasons[10].startswith("invalid UTF-8") and "expected a JSON object" in reasons[8]
    rejects = tmp_path / "rejects.jsonl"
    assert write_rejects(report.rejections, rejects) == 8
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert rows[0]["raw"] == '{"prompt": "broken",'  # the raw line is kept, nothing is lost


def test_truncated_gzip_keeps_what_was_readable(tmp_path):
    full = "".join(json.dumps({**GOOD, "prompt": f"p{i}"}) + "\n" for i in range(200)).encode()
    blob = gzip.compress(full)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(DataError, match="truncated gzip"):
        load(str(path))
    report = load(str(path), strict=False).report
    assert report.rejected == 1 and report.kept > 50
    assert report.read == report.kept + 1
    assert report.rejections[0].line == report.kept + 1


def test_empty_file_and_missing_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        load(str(tmp_path / "empty.jsonl"), strict=False)
    with pytest.raises(DataError, match="no such file"):
        load(str(tmp_path / "nope.jsonl"))


def test_json_array_lines_and_bad_element(tmp_path):
    path = tmp_path / "pairs.json"
    row = '{"record_type": "preference", "prompt": "%s", "chosen": "x", "rejected": %s}'
    path.write_text("[\n  " + row % ("a", '"y"') + ",\n\n  " + row % ("b", 1) + ',\n  {"prompt": "c"}\n]')
    loaded = load(str(path), format_name="canonical", strict=False)
    assert loaded.report.kept == 1
    assert [(r.line, r.field) for r in loaded.report.rejections] == [(4, "rejected"), (5, "record_type")]


def test_duplicates_counted_and_optionally_rejected(tmp_path):
    path = write_jsonl(tmp_path / "dups.jsonl", [GOOD, {**GOOD, "prompt": "other"}, GOOD])
    kept_all = load(str(path))
    assert kept_all.report.duplicates == 1 and kept_all.report.kept == 3
    deduped = load(str(path), dedupe=True)
    assert deduped.report.kept == 2 and deduped.report.rejected == 1
    assert deduped.report.rejections[0].reason == f"duplicate of {path}:1"
    assert deduped.report.read == deduped.report.kept + deduped.report.rejected


def test_spec_parsing(tmp_path):
    spec = parse_spec("PKU-Alignment/PKU-SafeRLHF@abc123#test:0.25")
    assert (spec.location, spec.revision, spec.split, spec.proportion) == ("PKU-Alignment/PKU-SafeRLHF", "abc123", "test", 0.25)
    odd = tmp_path / "name:0.5"  # an existing path is taken whole
    odd.write_text("")
    assert parse_spec(str(odd)).proportion == 1.0
    with pytest.raises(DataError, match="proportion must be above 0"):
        parse_spec("data.jsonl:0")


def test_mixture_proportions_are_seeded(data_dir):
    v1 = str(data_dir / "pku_saferlhf/v1_test_sample.jsonl")
    v0 = str(data_dir / "pku_saferlhf/v0_pairs_32.json")
    a = load([f"{v1}:0.5", f"{v0}:2"], seed=3)
    b = load([f"{v1}:0.5", f"{v0}:2"], seed=3)
    c = load([f"{v1}:0.5", f"{v0}:2"], seed=4)
    assert len(a.records) == 50 + 64
    assert [r.origin for r in a.records] == [r.origin for r in b.records]
    assert [r.origin for r in a.records] != [r.origin for r in c.records]
    assert [used for _, _, used in a.per_source] == [50, 64]
    assert a.report.read == 132 and a.report.kept == 132
    assert len(take_proportion(list(range(10)), 1.5, 0)) == 15


def test_split_is_deterministic_and_grouped_by_prompt(data_dir):
    records = load(str(data_dir / "beavertails/unsafe_qa_140.csv")).records
    train, val = split_train_validation(records, 0.2, seed=1)
    again_train, again_val = split_train_validation(list(reversed(records)), 0.2, seed=1)
    assert {r.origin for r in val} == {r.origin for r in again_val}
    assert len(train) + len(val) == 140 and 10 <= len(val) <= 45
    assert not {r.prompt for r in train} & {r.prompt for r in val}


def test_side_specs_split_a_file_by_prompt_and_account_for_the_rest(data_dir):
    path = str(data_dir / "beavertails/unsafe_qa_140.csv")
    spec = parse_spec(f"{path}%test=0.25:0.5")
    assert (spec.location, spec.side, spec.share, spec.proportion) == (path, "test", 0.25, 0.5)
    test, train = load(f"{path}%test=0.25"), load(f"{path}%train=0.25")
    assert len(test.records) + len(train.records) == 140 and 15 <= len(test.records) <= 55
    assert not {r.prompt for r in test.records} & {r.prompt for r in train.records}
    for part in (test, train):  # nothing lost: what the split leaves out is counted apart from rejections
        assert part.report.read == 140 == part.report.kept + part.report.rejected + part.report.other_side
    # the split's salt is its own: a validation split inside one side is not empty
    inner_train, inner_val = split_train_validation(train.records, 0.25, seed=0)
    assert inner_val and inner_train
    with pytest.raises(DataError, match="held-out share must be between 0 and 1"):
        parse_spec("data.jsonl%test=0.0")


def test_hub_path_goes_through_the_datasets_library(tmp_path, data_dir, monkeypatch):
    # A local dataset folder is read by datasets.load_dataset, the same call a hub id makes.
    folder = tmp_path / "my_dataset"
    (folder / "data").mkdir(parents=True)
    lines = (data_dir / "pku_saferlhf/v1_test_sample.jsonl").read_text().splitlines()
    (folder / "data" / "train.jsonl").write_text("\n".join(lines[:60]) + "\n")
    (folder / "data" / "test.jsonl").write_text("\n".join(lines[60:]) + "\n")
    with pytest.raises(DataError, match="pick one with"):
        load(str(folder))
    loaded = load(f"{folder}#test")
    assert loaded.report.kept == 40 and loaded.report.formats[str(folder)] == "pku-saferlhf-v1"
    # a hub id passes its pinned revision and split to datasets.load_dataset
    import datasets

    calls = []

    def fake_load_dataset(name, revision=None, split=None):
        calls.append((name, revision, split))
        return datasets.Dataset.from_list([json.loads(line) for line in lines[:5]])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load("PKU-Alignment/PKU-SafeRLHF@v1#train").report.kept == 5
    assert calls == [("PKU-Alignment/PKU-SafeRLHF", "v1", "train")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load("someone/unpinned-dataset")
    assert any("no revision pinned" in str(w.message) for w in caught)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_canonical_round_trip(tmp_path, data_dir, suffix):
    original = load(str(data_dir / "pku_saferlhf/v1_test_sample.jsonl")).records
    qa, _ = derive(original, "qa")
    for records in (original, qa):
        out = write_records(records, tmp_path / f"out_{records[0].record_type}{suffix}")
        back = load(str(out))
        assert back.report.formats[str(out)] == "canonical"
        assert len(back.records) == len(records)
        strip = lambda r: {**{k: getattr(r, k) for k in r.__slots__}, "origin": None}  # noqa: E731
        assert [strip(r) for r in back.records] == [strip(r) for r in records]


def test_derivations(data_dir):
    pairs = load(str(data_dir / "pku_saferlhf/v1_test_sample.jsonl")).records
    pair = pairs[1]
    qa0, qa1 = pair_to_qa(pair)
    assert (qa0.response, qa0.is_safe, qa0.severity) == (pair.response_0, pair.is_response_0_safe, pair.response_0_severity)
    assert qa1.harm_categories == pair.response_1_harm_categories and qa1.source == pair.response_1_source
    helpful = pair_to_preference(pair, "helpfulness")
    harmless = pair_to_preference(pair, "harmlessness")
    assert helpful.chosen == pair.response(pair.better_response_id)
    assert harmless.chosen == pair.response(pair.safer_response_id)
    both, skipped = derive(pairs, "both")
    assert skipped == 14 and len(both) == 86  # 8 + 6 pairs where better != safer
    with pytest.raises(ValueError, match="unknown derivation"):
        derive(pairs, "sideways")


def test_gzip_csv_with_bad_bytes_and_foreign_parquet(tmp_path):
    csv_text = "prompt,response,category\nq1,a1,self_harm\nq2,a2,not_a_key\n".encode() + b"q3,\xff\xfe,self_harm\n"
    path = tmp_path / "qa.csv.gz"
    path.write_bytes(gzip.compress(csv_text))
    loaded = load(str(path), strict=False)
    assert (loaded.report.read, loaded.report.kept) == (3, 1)
    assert [(r.line, r.field, r.reason.split(" ")[0]) for r in loaded.report.rejections] == [
        (3, "category", "unknown"),
        (4, "-", "invalid"),
    ]
    import pandas as pd

    rows = [{"prompt": "p", "response": "r", "helpfulness": 3, "correctness": 2, "coherence": 4, "complexity": 1, "verbosity": 0}]
    pd.DataFrame(rows * 3).to_parquet(tmp_path / "helpsteer.parquet")
    hs = load(str(tmp_path / "helpsteer.parquet"))
    assert hs.report.formats[str(tmp_path / "helpsteer.parquet")] == "helpsteer" and hs.report.duplicates == 2
    assert hs.records[0].attributes() == (3.0, 2.0, 4.0, 1.0, 0.0)


def test_training_prompts_leave_out_the_evaluation_prompts(tmp_path, data_dir):
    from safealign.data.load import prompt_key, without_prompts
    from safealign.train.ppo import PPOConfig, training_prompts

    assert prompt_key("  How do I\n make  Bread? ") == prompt_key("how do i make bread?")
    evaluation = str(data_dir / "beavertails/evaluation_700.json")
    records = load(evaluation).records
    mixed = tmp_path / "mixed.jsonl"  # 3 evaluation prompts (one re-spaced and upper-cased) and 2 others
    rows = [{"record_type": "prompt", "prompt": p} for p in
            [records[0].prompt, "  " + records[1].prompt.upper(), records[2].prompt, "Name a river.", "Spell cat."]]
    mixed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    kept, dropped = without_prompts(load(str(mixed)).records, records)
    assert dropped == 3 and [r.prompt for r in kept] == ["Name a river.", "Spell cat."]
    cfg = PPOConfig(actor="a", reward_model="r", prompts=[str(mixed)], exclude_prompts=[evaluation], max_steps=1)
    assert training_prompts(cfg, verbose=False) == [[{"role": "user", "content": "Name a river."}],
                                                    [{"role": "user", "content": "Spell cat."}]]
    with pytest.raises(DataError, match="every prompt is also in exclude_prompts"):
        training_prompts(PPOConfig(actor="a", reward_model="r", prompts=[evaluation], exclude_prompts=[evaluation], max_steps=1))
