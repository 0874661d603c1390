"""`safealign generate` on a tiny random policy and the bundled BeaverTails-Evaluation prompts."""

from __future__ import annotations

import json

from conftest import DATA, run_cli
from tiny import tiny_llama

from safealign.data.load import load
from safealign.inference.generate import generate_answers, load_generator
from safealign.inference.sampling import SamplingSettings


def test_generate_cli_writes_one_answer_per_prompt(tmp_path):
    model = tiny_llama(tmp_path / "policy")
    out = tmp_path / "answers.jsonl"
    proc = run_cli("generate", "--model", str(model), "--prompts", str(DATA / "beavertails/evaluation_700.json"),
                   "--limit", "5", "--max-new-tokens", "6", "--batch-size", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["category"] == "animal_abuse"
    assert all(isinstance(r["response"], str) for r in rows)


def test_batched_greedy_answers_do_not_depend_on_padding(tmp_path):
    # Left padding and position ids: a prompt answered alone or beside a longer one gives the same greedy text.
    policy, tokenizer = load_generator(str(tiny_llama(tmp_path / "policy")))
    records = load(str(DATA / "beavertails/evaluation_700.json")).records[:3]
    greedy = SamplingSettings(max_new_tokens=5, temperature=0.0)
    together = [a for _, a in generate_answers(policy, tokenizer, records, greedy, batch_size=3)]
    alone = [a for r in records for _, a in generate_answers(policy, tokenizer, [r], greedy, batch_size=1)]
    assert together == alone
