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


def test_devices_auto_is_the_cpu_here_and_a_missing_gpu_is_a_clear_error(tmp_path):
    import pytest
    import torch

    from safealign.config import ConfigError
    from safealign.evaluate.safety import SafetyEvalConfig
    from safealign.models.loading import DeviceError, resolve_device

    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="'toaster' is not a device"):
        resolve_device("toaster")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusals below cannot be seen")
    with pytest.raises(ConfigError, match="device: 'cuda' asked for, but torch sees no CUDA device"):
        SafetyEvalConfig(policy="p", moderator="m", prompts=["x"], device="cuda").validate()
    proc = run_cli("generate", "--model", str(tmp_path / "missing"), "--prompts", str(DATA / "beavertails/evaluation_700.json"),
                   "--limit", "1", "--device", "cuda:0")
    assert proc.returncode == 1 and "device: 'cuda:0' asked for, but torch sees no CUDA device here" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    model = tiny_llama(tmp_path / "policy")
    policy, _ = load_generator(str(model), device="auto")
    assert next(policy.parameters()).device == resolve_device("auto")
