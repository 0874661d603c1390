"""Which module to call, under each of accelerate's engines, for generation, log-probs and values.

- One process and DDP: every process holds whole parameters; `generate` runs on the
  unwrapped module (DDP's wrapper has no `generate`), no-grad forwards go through the
  prepared model.
- FSDP2 (`fsdp_version: 2`, `torch.distributed.fsdp.fully_shard`): the prepared model *is*
  the module, with hooks that gather each shard group as its forward runs; generation and
  forwards need nothing more (checked on CPU with gloo: the same tokens as unsharded).
- FSDP1 (`fsdp_version: 1`): the unwrapped module holds flat shards and its root unit gathers
  only when the wrapper's own forward runs, so `generate` cannot run on it; RL refuses it
  and says to use FSDP2.
- DeepSpeed (any ZeRO stage): accelerate needs one DeepSpeed plugin, engine and optimizer per
  trained model (the actor and each critic), and generation under ZeRO-3 needs the
  parameters gathered (`deepspeed.zero.GatheredParameters`). safealign does not build those
  yet, and accelerate 1.15 cannot run DeepSpeed on a CPU (its state reports one process on
  every rank), so nothing here could test them: RL refuses DeepSpeed and names FSDP2.
  Score-model, SFT and DPO training (one model) run under DeepSpeed as accelerate runs them.
"""

from __future__ import annotations

from typing import Any

from safealign.train.loop import TrainingError


class EngineError(TrainingError):
    """An accelerate engine that RL training cannot run on, with what to use instead."""


def engine_name(acc: Any) -> str:
    """single, ddp, fsdp1, fsdp2, deepspeed (ZeRO 0–2) or zero3 (DeepSpeed ZeRO-3), from accelerate's public state."""
    from accelerate.utils import DistributedType

    kind = acc.distributed_type
    if kind == DistributedType.FSDP:
        return f"fsdp{getattr(acc.state.fsdp_plugin, 'fsdp_version', 1) or 1}"
    if kind == DistributedType.DEEPSPEED:
        return "zero3" if getattr(acc.state.deepspeed_plugin, "zero_stage", 0) == 3 else "deepspeed"
    return "single" if acc.num_processes == 1 else "ddp"


def check_rl_engine(acc: Any) -> str:
    """The engine's name, or an EngineError for one that RL cannot run under (with what to use instead)."""
    name = engine_name(acc)
    if name == "fsdp1":
        raise EngineError("PPO under FSDP needs fsdp_version: 2 in the accelerate config: FSDP1's wrapper gathers its "
                          "root parameters only in its own forward, so the policy cannot generate "
                          "(configs/scale/accelerate_fsdp.yaml has it)")
    if name in ("deepspeed", "zero3"):
        raise EngineError("PPO does not run under DeepSpeed yet (it needs one engine per trained model, and gathered "
                          "parameters to generate under ZeRO-3); shard with FSDP2 instead: "
                          "accelerate launch --config_file configs/scale/accelerate_fsdp.yaml")
    return name
