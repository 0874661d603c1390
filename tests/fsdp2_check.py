"""Run by tests/test_sharded.py under `torch.distributed.run` (2 CPU processes, gloo): not a test module itself.

FSDP2-shards a tiny policy and a tiny score model (each decoder layer and the root, as
accelerate's TRANSFORMER_BASED_WRAP does) and checks that the RL passes give what the
unsharded models give: `sample` (the same tokens), `token_log_probs` and `critic_values`.
Rank 0 writes the comparison to the JSON file named by argv[2].
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from safealign.inference.sampling import SamplingSettings, encode_prompts, row_seed, sample, token_log_probs
from safealign.models.score import ScoreModel, load_score_tokenizer
from safealign.train.policy import load_policy
from safealign.train.rollout import critic_values


def shard(model: torch.nn.Module, layers: torch.nn.ModuleList, mesh) -> None:
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    folder = sys.argv[1]
    policy, tokenizer = load_policy(folder)
    critic = ScoreModel.from_base(folder, kind="reward")
    whole_policy, whole_critic = copy.deepcopy(policy).eval(), copy.deepcopy(critic).eval()
    shard(policy, policy.model.layers, mesh)
    shard(critic, critic.backbone.layers, mesh)
    policy.eval(), critic.eval()
    sharded_weight = type(policy.lm_head.weight).__name__
    local_rows = policy.lm_head.weight.to_local().shape[0]
    dialogues = [[{"role": "user", "content": t}] for t in ("How do I bake bread?", "Tell me a joke", "Why is the sky blue?")]
    ids, mask = encode_prompts(load_score_tokenizer(folder), dialogues, 64)
    settings = SamplingSettings(max_new_tokens=6, temperature=0.8)
    seeds = [row_seed(7, i) for i in range(len(dialogues))]
    with torch.no_grad():
        ours = sample(policy, tokenizer, ids, mask, settings, seeds)
        theirs = sample(whole_policy, tokenizer, ids, mask, settings, seeds)
        logp, _ = token_log_probs(policy, ours, temperature=0.8)
        whole_logp, _ = token_log_probs(whole_policy, ours, temperature=0.8)
        values, whole_values = critic_values(critic, ours), critic_values(whole_critic, ours)
    result = {"weight": sharded_weight, "local_rows": local_rows, "vocab": len(tokenizer),
              "same_tokens": torch.equal(ours.sequences, theirs.sequences),
              "logp_gap": (logp - whole_logp).abs().max().item(), "value_gap": (values - whole_values).abs().max().item()}
    if dist.get_rank() == 0:
        with open(sys.argv[2], "w", encoding="utf-8") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
