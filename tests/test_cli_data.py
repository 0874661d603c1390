"""One subprocess test per `safealign data` command, as a user runs them."""

from __future__ import annotations

import json

from conftest import run_cli, write_jsonl


def test_validate_ok_and_strict_failure(data_dir, tmp_path):
    ok = run_cli("data", "validate", str(data_dir / "pku_saferlhf/v1_test_sample.jsonl"), check=True)
    assert "pku-saferlhf-v1" in ok.stdout and "read 100 | kept 100 | rejected 0" in ok.stdout
    lines = (data_dir / "pku_saferlhf/v1_test_sample.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    bad["safer_response_id"] = 7
    path = write_jsonl(tmp_path / "bad.jsonl", [json.loads(lines[0]), json.loads(lines[1]), bad])
    strict = run_cli("data", "validate", str(path))
    assert strict.returncode == 1
    assert f"{path}:3: field 'safer_response_id': must be 0 or 1, got 7" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_validate_skip_invalid_writes_rejects(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"record_type": "preference", "prompt": "p", "chosen": "a", "rejected": "b"},
        "{not json",
        {"record_type": "preference", "prompt": "p2", "chosen": "a", "rejected": "b", "colour": "red"},
    ])
    rejects = tmp_path / "rejects.jsonl"
    proc = run_cli("data", "validate", str(path), "--skip-invalid", "--rejects", str(rejects))
    assert proc.returncode == 1  # validation found problems
    assert "read 3 | kept 1 | rejected 2" in proc.stdout
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rows] == [(2, "-"), (3, "colour")]
    assert rows[0]["raw"] == "{not json"


def test_stats_table_json_and_plots(data_dir, tmp_path):
    proc = run_cli("data", "stats", str(data_dir / "pku_saferlhf/v1_test_sample.jsonl"), "--plots", str(tmp_path / "plots"), check=True)
    assert "safe ratio" in proc.stdout and "0.610" in proc.stdout
    assert "Cybercrime" in proc.stdout and "2 moderate" in proc.stdout
    assert (tmp_path / "plots" / "harm_categories.png").is_file()
    js = run_cli("data", "stats", str(data_dir / "beavertails/evaluation_700.json"), "--json", check=True)
    data = json.loads(js.stdout)
    assert data["records"] == {"prompt": 700} and data["load"] == {"read": 700, "kept": 700, "rejected": 0, "other_side": 0}
    assert data["prompt_categories"]["beavertails:self_harm"] == 50


def test_convert_with_derivation_to_parquet(data_dir, tmp_path):
    out = tmp_path / "qa.parquet"
    proc = run_cli("data", "convert", str(data_dir / "pku_saferlhf/v1_test_sample.jsonl"), "--derive", "qa", "--to", str(out), check=True)
    assert "wrote 200 record(s)" in proc.stdout
    back = run_cli("data", "validate", str(out), check=True)
    assert "canonical" in back.stdout and "kept 200" in back.stdout
    both = run_cli("data", "convert", str(data_dir / "pku_saferlhf/v1_test_sample.jsonl"), "--derive", "both", "--to", str(tmp_path / "both.jsonl"), check=True)
    assert "14 pairs skipped" in both.stdout


def test_formats_lists_every_adapter():
    proc = run_cli("data", "formats", check=True)
    for name in ("pku-saferlhf-v1", "pku-saferlhf-v0", "pku-saferlhf-qa", "beavertails-qa", "beavertails-single", "beavertails-eval", "hh-rlhf", "helpsteer", "steerlm", "canonical"):
        assert name in proc.stdout
