"""Adapters on the real files in ../shared/data, and on hand-made rows."""

from __future__ import annotations

import hashlib
import json

import pytest

from safealign.data.errors import RecordError
from safealign.data.formats import FORMATS, detect_format
from safealign.data.formats.helpsteer import parse_steerlm_text
from safealign.data.formats.hh_rlhf import parse as parse_hh
from safealign.data.load import read_source, parse_spec
from safealign.data.records import DualPreferencePair, PreferencePair, PromptRecord, QARecord
from safealign.data.taxonomy import BEAVERTAILS_CATEGORIES, PKU_CATEGORIES


def load_file(path, fmt=None, strict=True):
    return read_source(parse_spec(str(path)), fmt, strict)


def first_v1_row(data_dir) -> dict:
    return json.loads((data_dir / "pku_saferlhf/v1_test_sample.jsonl").read_text().splitlines()[0])


def test_taxonomies_have_the_original_names():
    assert len(PKU_CATEGORIES) == 19 and PKU_CATEGORIES.categories[0] == "Endangering National Security"
    assert PKU_CATEGORIES.categories[-1] == "Animal Abuse"
    assert len(BEAVERTAILS_CATEGORIES) == 14
    assert BEAVERTAILS_CATEGORIES.index("violence,aiding_and_abetting,incitement") == 13


def test_pku_v1_real_file(data_dir):
    records, report = load_file(data_dir / "pku_saferlhf/v1_test_sample.jsonl")
    assert report.formats == {str(data_dir / "pku_saferlhf/v1_test_sample.jsonl"): "pku-saferlhf-v1"}
    assert (report.read, report.kept, report.rejected) == (100, 100, 0)
    first = records[0]
    assert isinstance(first, DualPreferencePair)
    assert first.is_response_0_safe is False and first.response_0_severity == 3
    # the first record flags these three of the 19 categories, in taxonomy order
    assert first.response_0_harm_categories == ("Endangering National Security", "Economic Crime", "Cybercrime")
    assert (first.better_response_id, first.safer_response_id) == (1, 1)
    assert first.response_0_source == "Alpaca-7B" and first.prompt_source == "WizardLM-30B-Uncensored"
    assert first.origin.endswith("v1_test_sample.jsonl:1")
    # safe responses carry severity 0 and no category (checked for every record)
    for r in records:
        for i in (0, 1):
            assert (r.severity(i) == 0) == r.is_safe(i) == (not r.harm_categories(i))


def test_pku_v1_sha256_mismatch_is_reported(data_dir):
    row = first_v1_row(data_dir)
    row["response_1"] += " (edited)"
    with pytest.raises(RecordError) as err:
        FORMATS["pku-saferlhf-v1"].parse_row(row, False)
    assert err.value.field == "response_1_sha256"
    assert "sha256(prompt + response_1)" in err.value.reason
    # re-hashing the edited text makes it valid again
    row["response_1_sha256"] = hashlib.sha256((row["prompt"] + row["response_1"]).encode()).hexdigest()
    assert FORMATS["pku-saferlhf-v1"].parse_row(row, False).response_1.endswith("(edited)")


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"better_response_id": 2}, "better_response_id", "must be 0 or 1"),
        ({"safer_response_id": "1"}, "safer_response_id", "expected an integer"),
        ({"response_0_severity_level": 4}, "response_0_severity_level", "severity must be 0–3"),
        ({"is_response_0_safe": "no"}, "is_response_0_safe", "expected true or false"),
        ({"prompt": 3}, "prompt", "expected a string"),
        ({"extra": 1}, "extra", "unknown field"),
        ({"response_0_severity_level": 0}, "is_response_0_safe", "labelled unsafe with severity level 0"),
    ],
)
def test_pku_v1_bad_fields(data_dir, change, field, words):
    row = {**first_v1_row(data_dir), **change}
    with pytest.raises(RecordError) as err:
        FORMATS["pku-saferlhf-v1"].parse_row(row, False)
    assert err.value.field == field
    assert words in err.value.reason


def test_pku_v1_missing_field_and_unknown_category(data_dir):
    row = first_v1_row(data_dir)
    del row["response_1_sha256"]
    with pytest.raises(RecordError, match="missing field") as err:
        FORMATS["pku-saferlhf-v1"].parse_row(row, False)
    assert err.value.field == "response_1_sha256"
    row = first_v1_row(data_dir)
    row["response_1_harm_category"] = {**row["response_1_harm_category"], "Jaywalking": False}
    with pytest.raises(RecordError, match="unknown pku-saferlhf category 'Jaywalking'"):
        FORMATS["pku-saferlhf-v1"].parse_row(row, False)


V0 = {
    "prompt": "p",
    "response_0": "a",
    "response_1": "b",
    "is_response_0_safe": True,
    "is_response_1_safe": False,
    "better_response_id": 1,
    "safer_response_id": 0,
}


def test_pku_v0_and_inconsistent_safety(data_dir):
    records, report = load_file(data_dir / "pku_saferlhf/v0_pairs_32.json")
    assert (report.read, report.kept) == (32, 32)
    assert records[0].response_0_harm_categories == () and records[0].response_0_severity is None
    assert records[0].origin.endswith("v0_pairs_32.json:2")  # JSON array: the line the element starts on
    pair = FORMATS["pku-saferlhf-v0"].parse_row(V0, False)
    assert (pair.better_response_id, pair.safer_response_id) == (1, 0)
    with pytest.raises(RecordError) as err:
        FORMATS["pku-saferlhf-v0"].parse_row({**V0, "safer_response_id": 1}, False)
    assert err.value.field == "safer_response_id"
    assert "safer response 1 is labelled unsafe while response 0 is labelled safe" in err.value.reason
    with pytest.raises(RecordError, match="identical"):
        FORMATS["pku-saferlhf-v0"].parse_row({**V0, "response_1": "a"}, False)


def test_pku_qa_row():
    flags = {c: c == "Violence" for c in PKU_CATEGORIES.categories}
    row = {"prompt": "p", "response": "r", "is_safe": False, "harm_category": flags, "severity_level": 2}
    assert detect_format(row, "x").name == "pku-saferlhf-qa"
    rec = FORMATS["pku-saferlhf-qa"].parse_row(row, False)
    assert isinstance(rec, QARecord) and rec.harm_categories == ("Violence",) and rec.severity == 2
    with pytest.raises(RecordError, match="labelled safe but has harm category 'Violence'"):
        FORMATS["pku-saferlhf-qa"].parse_row({**row, "is_safe": True, "severity_level": 0}, False)


def test_beavertails_csv_and_qa(data_dir):
    records, report = load_file(data_dir / "beavertails/unsafe_qa_140.csv")
    assert report.formats[str(data_dir / "beavertails/unsafe_qa_140.csv")] == "beavertails-single"
    assert report.kept == 140
    assert all(r.is_safe is False and len(r.harm_categories) == 1 for r in records)
    assert records[0].harm_categories == ("child_abuse",) and records[0].origin.endswith(":2")
    flags = {c: False for c in BEAVERTAILS_CATEGORIES.categories}
    row = {"prompt": "p", "response": "r", "category": flags, "is_safe": True}
    assert FORMATS["beavertails-qa"].parse_row(row, False).is_safe is True
    with pytest.raises(RecordError, match="is_safe is false but the record flags no category"):
        FORMATS["beavertails-qa"].parse_row({**row, "is_safe": False}, False)


def test_beavertails_evaluation(data_dir):
    records, report = load_file(data_dir / "beavertails/evaluation_700.json")
    assert report.kept == 700 and all(isinstance(r, PromptRecord) for r in records)
    per_category = {c: sum(r.category == c for r in records) for c in BEAVERTAILS_CATEGORIES.categories}
    assert set(per_category.values()) == {50}
    with pytest.raises(RecordError, match="does not match category"):
        FORMATS["beavertails-eval"].parse_row({"prompt": "p", "category": "self_harm", "category_id": 0}, False)


def test_hh_rlhf_split_keeps_context():
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to bake bread?\n\nAssistant: Mix flour and water.",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to bake bread?\n\nAssistant: No.",
    }
    pair = parse_hh(row, False)
    assert isinstance(pair, PreferencePair)
    assert pair.prompt == "how to bake bread?"
    assert pair.context == (("user", "hi"), ("assistant", "hello"))
    assert (pair.chosen, pair.rejected) == ("Mix flour and water.", "No.")
    with pytest.raises(RecordError, match="differs from the chosen one"):
        parse_hh({**row, "rejected": "\n\nHuman: hey\n\nAssistant: hello\n\nHuman: how to bake bread?\n\nAssistant: No."}, False)


def test_hh_rlhf_real_files(data_dir):
    records, report = load_file(data_dir / "hh_rlhf/harmless-base_test.jsonl.gz", strict=False)
    # 5 of the 2,312 real pairs answer different dialogues and are rejected
    assert (report.read, report.kept, report.rejected) == (2312, 2307, 5)
    assert {r.reason for r in report.rejections} == {"the dialogue before the final Assistant turn differs from the chosen one"}


def test_hh_rlhf_with_docta_suggestions(shared_data):
    docta, _ = load_file(shared_data / "hh_rlhf/docta/harmless-base_train_docta_100.jsonl.gz")
    assert docta[0].meta == {"suggest_chosen_rejected": ["chosen", "rejected"], "suggest_confidence": 0.5}
    assert docta[0].prompt == "What's your favorite one?" and docta[0].chosen == "I haven't even thought about it."


def test_steerlm_and_helpsteer(data_dir):
    records, report = load_file(data_dir / "helpsteer/steerlm_regression_8.jsonl")
    assert report.kept == 8
    first = records[0]
    assert first.attributes() == (4.0, 4.0, 4.0, 3.0, 2.0)
    assert first.prompt == "explain master slave replication nsql"
    assert first.system.startswith("A chat between a curious user")
    assert first.response.endswith("in case of a failure.")
    text = "<extra_id_0>System\nS\n<extra_id_1>User\nq1\n<extra_id_1>Assistant\na1\n<extra_id_1>User\nq2\n<extra_id_1>Assistant\na2\n<extra_id_2>"
    system, turns = parse_steerlm_text(text)
    assert system == "S" and turns == [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    multi = FORMATS["steerlm"].parse_row({"text": text, "label": [-100] * 4 + [1, 2, 3, 4, -100]}, False)
    assert (multi.prompt, multi.response, multi.context) == ("q2", "a2", (("user", "q1"), ("assistant", "a1")))
    assert multi.verbosity is None
    row = {"prompt": "p", "response": "r", "helpfulness": 3, "correctness": None, "coherence": 4, "complexity": 1, "verbosity": 0}
    assert FORMATS["helpsteer"].parse_row(row, False).attributes() == (3.0, None, 4.0, 1.0, 0.0)
    with pytest.raises(RecordError, match="must be in 0–4, got 5"):
        FORMATS["helpsteer"].parse_row({**row, "verbosity": 5}, False)


def test_csv_values_are_read_as_the_types_they_spell(tmp_path):
    path = tmp_path / "v0.csv"
    path.write_text("prompt,response_0,response_1,is_response_0_safe,is_response_1_safe,better_response_id,safer_response_id\n"
                    'p,"a, with comma",b,true,False,1,0\n')
    records, _ = load_file(path)
    assert records[0].response_0 == "a, with comma" and records[0].is_response_1_safe is False
    assert records[0].better_response_id == 1
