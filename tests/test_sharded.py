"""RL under sharded engines, on the CPU: FSDP2 passes equal the unsharded ones; engines RL cannot run on are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import free_port
from tiny import tiny_llama

from safealign.train.sharded import EngineError, check_rl_engine, engine_name


def test_fsdp2_sharded_generation_log_probs_and_values_equal_the_whole_models(tmp_path):
    # accelerate cannot run FSDP on a CPU; torch's fully_shard can (gloo), and it is what
    # accelerate's fsdp_version: 2 applies: this checks the passes PPO makes on such modules.
    folder = tiny_llama(tmp_path / "policy")
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(Path(__file__).with_name("fsdp2_check.py")), str(folder), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["weight"] == "DTensor" and result["local_rows"] * 2 == result["vocab"]  # really sharded in two
    assert result["same_tokens"]
    assert result["logp_gap"] < 1e-5 and result["value_gap"] < 1e-5


def _acc(kind: str, processes: int = 2, **state) -> SimpleNamespace:
    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=getattr(DistributedType, kind), num_processes=processes,
                           state=SimpleNamespace(**state))


def test_engines_rl_cannot_generate_under_are_refused_with_what_to_use():
    assert engine_name(_acc("NO", 1)) == "single" and engine_name(_acc("MULTI_CPU")) == "ddp"
    assert check_rl_engine(_acc("FSDP", fsdp_plugin=SimpleNamespace(fsdp_version=2))) == "fsdp2"
    with pytest.raises(EngineError, match="fsdp_version: 2"):
        check_rl_engine(_acc("FSDP", fsdp_plugin=SimpleNamespace(fsdp_version=1)))
    for stage in (2, 3):
        with pytest.raises(EngineError, match="does not run under DeepSpeed yet.*FSDP2"):
            check_rl_engine(_acc("DEEPSPEED", deepspeed_plugin=SimpleNamespace(zero_stage=stage)))
