"""PPO, PPO-Lagrangian (Safe RLHF) and reward shaping: one RL trainer, three objectives.

Each step: sample responses to a batch of prompts, score them with the reward (and cost)
model, shape per-token signals with the KL to the reference (r̂_t = −β·kl_t, ĉ_t = +β·kl_t,
sequence scores clipped to ±score_clip and added at the last token), estimate advantages
with GAE under separate reward and cost critics, and update the actor with the clipped
surrogate on

- ppo:          A = A_R (cost, when a cost model is given, is only logged);
- ppo-lag:      A = (A_R − λ·A_C)/(1 + λ), λ learned in log space on J_C − d;
- ppo-shaping:  A from the reward R − λ·C with λ fixed (`shaping_lambda`), one critic.

Critics start from the reward / cost models (or the actor's backbone) and train with the
clipped value loss. With LoRA the reference policy is the actor with its adapters disabled.
"""

from __future__ import annotations

import copy
import functools
import json
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from accelerate.utils import gather_object, set_seed
from torch import Tensor

from safealign.config import ConfigError
from safealign.data.errors import DataError
from safealign.data.load import load, without_prompts
from safealign.data.records import dialogue
from safealign.inference.sampling import Rollout, SamplingSettings, encode_prompts, row_seed, sample, token_log_probs
from safealign.inference.scoring import LengthScorer, ModelScorer
from safealign.losses import (clipped_value_loss, gae, lagrangian_advantage, length_adjusted_reward, masked_mean,
                              ppo_policy_loss, standardise)
from safealign.models.score import LoraSettings, ScoreModel, load_score_tokenizer
from safealign.train import memory
from safealign.train.config import RunConfig, write_run_config
from safealign.train.lagrange import LagrangeMultiplier
from safealign.train.loop import (
    clip_gradients,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    param_groups,
    progress_bar,
    resume_state,
    save_checkpoint,
    step_optimizer,
)
from safealign.train.logger import MetricsLogger
from safealign.train.policy import load_policy, save_policy
from safealign.train.rollout import Scorer, critic_values, shaped_rewards
from safealign.train.sharded import check_rl_engine

Algorithm = Literal["ppo", "ppo-lag", "ppo-shaping"]


LENGTH_REWARD = "length"  # reward_model: the answer's length, not a model


@dataclass(kw_only=True)
class PPOConfig(RunConfig, SamplingSettings):
    """RL fine-tuning of a policy against a reward model, under a cost constraint for ppo-lag.

    Sampling fields (`max_new_tokens`, `temperature`, ...) come from `SamplingSettings`, with
    its defaults; PPO needs temperature > 0, top_p 1, top_k 0 and no repetition penalty.
    """

    max_steps: int | None = 100
    """PPO steps to run: each samples `rollout_batch_size` prompts per process and updates on them."""
    actor: str
    """The policy to fine-tune: an offline alias, a folder (e.g. an SFT output) or a hub id."""
    reward_model: str = ""
    """Reward model folder (from `safealign train reward`), or `length`: the answer's length over max_new_tokens (the length-only control); required unless the caller passes a reward function."""
    cost_model: str | None = None
    """Cost model folder (from `safealign train cost`); required for ppo-lag and ppo-shaping."""
    prompts: list[str] = field(default_factory=list)
    """Prompt data (any records with prompts): PATH_OR_NAME[@REV][#SPLIT][:PROPORTION] entries."""
    format: str | None = None
    """Source format of the prompt data (detected when None)."""
    skip_invalid: bool = False
    """Go on past bad prompt records."""
    exclude_prompts: list[str] = field(default_factory=list)
    """Data whose prompts PPO must not train on (e.g. the evaluation prompts): equal prompts (case and spacing aside) are dropped, counted."""
    lora: LoraSettings | None = None
    """LoRA on the actor and both critics; the reference is then the actor without adapters."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights dtype of every model."""
    critic_init: Literal["score-models", "actor"] = "score-models"
    """Start the reward/cost critics from the reward/cost models, or from the actor's backbone."""
    rollout_batch_size: int = 16
    """Prompts sampled per step and process."""
    minibatch_size: int = 8
    """Episodes per PPO update (per process)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    max_prompt_length: int = 256
    """Prompt tokens kept (the end of long prompts)."""
    clip_range: float = 0.2
    """PPO ratio clip ε."""
    value_clip: float = 5.0
    """Clip of the value update in the critic loss."""
    kl_coef: float = 0.01
    """β of the per-token KL penalty."""
    gamma: float = 1.0
    """Discount of GAE."""
    gae_lambda: float = 0.95
    """λ of GAE."""
    score_clip: float = 50.0
    """Sequence reward and cost scores are clipped to ±this."""
    critic_learning_rate: float | None = None
    """Learning rate of the critics (None: learning_rate)."""
    cost_limit: float = 0.0
    """d in the constraint E[cost] ≤ d."""
    lambda_init: float = 1.0
    """Initial Lagrange multiplier λ (ppo-lag)."""
    lambda_lr: float = 0.1
    """η of log λ ← log λ + η·(J_C − d)·λ (sgd), or Adam's step size on log λ."""
    lambda_optimizer: Literal["sgd", "adam"] = "sgd"
    """How log λ descends −(J_C − d)·λ: sgd (safe-rlhf's update; steps scale with λ and the violation) or adam (steps of about lambda_lr)."""
    lambda_max: float = 5.0
    """Upper clamp of λ."""
    episode_cost_window: int = 128
    """Episodes in the moving average J_C."""
    lambda_update_delay: int = 0
    """Steps before λ starts to move."""
    shaping_lambda: float = 1.0
    """Fixed λ of ppo-shaping (reward R − λ·C)."""
    length_penalty: float = 0.0
    """ω of the length penalty: the sequence reward loses ω · len / max_new_tokens ("A Long Way to Go")."""
    long_outputs: Literal["keep", "zero", "skip"] = "keep"
    """Answers that use all max_new_tokens (never ended): keep, reward 0 (zero), or left out of the update (skip)."""
    reward_scaling: Literal["none", "batch"] = "none"
    """batch: the reward model's scores standardised over each step's rollouts (all processes) before the length terms."""
    accelerate_config: str | None = None
    """The accelerate config file the run is launched with; the memory estimate reads its process count and sharding."""

    def validate(self) -> None:
        """Check settings once, early."""
        super().validate()
        self.validate_sampling()
        if self.length_penalty < 0:
            raise ConfigError(f"length_penalty: must not be negative, got {self.length_penalty}")
        if self.exclude_prompts and not self.prompts:
            raise ConfigError("exclude_prompts: given without prompts")
        if not self.actor:
            raise ConfigError("actor: required (an alias, a folder or a hub id)")
        for name in ("max_steps", "rollout_batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens", "episode_cost_window"):
            if getattr(self, name) is None:
                raise ConfigError(f"{name}: required")
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.minibatch_size > self.rollout_batch_size:
            raise ConfigError(f"minibatch_size: must not exceed rollout_batch_size ({self.rollout_batch_size})")
        if self.lambda_init <= 0 or self.lambda_max < self.lambda_init:
            raise ConfigError("lambda_init: must be above 0 and at most lambda_max")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: must be above 0 for PPO (it samples), got {self.temperature}")
        if self.top_k != 0:
            raise ConfigError(f"top_k: must be 0 for PPO, got {self.top_k}: the ratio and the KL are computed on the full distribution")
        for name in ("top_p", "repetition_penalty"):
            if getattr(self, name) != 1.0:
                raise ConfigError(f"{name}: must be 1.0 for PPO, got {getattr(self, name)}: the ratio and the KL are "
                                  "computed on softmax(logits / temperature), which a truncated or penalised sampler does not draw from")


def training_prompts(cfg: PPOConfig, verbose: bool = True) -> list[list[dict[str, str]]]:
    """The dialogues of `cfg.prompts`, without any prompt of `cfg.exclude_prompts`."""
    records = load(cfg.prompts, cfg.format, strict=not cfg.skip_invalid).records
    if cfg.exclude_prompts:
        records, dropped = without_prompts(records, load(cfg.exclude_prompts).records)
        if verbose:
            print(f"prompts: {len(records)} kept, {dropped} dropped (they are in exclude_prompts)", flush=True)
        if not records:
            raise DataError("prompts: every prompt is also in exclude_prompts; nothing left to train on")
    return [dialogue(r) for r in records]


@dataclass
class _Models:
    actor: Any
    tokenizer: Any
    reference: Any | None  # None: the actor with adapters disabled
    reward_critic: ScoreModel
    cost_critic: ScoreModel | None
    reward: Scorer
    cost: Scorer | None


def train_ppo(
    cfg: PPOConfig,
    algorithm: Algorithm,
    reward_fn: Scorer | None = None,
    cost_fn: Scorer | None = None,
    prompts: list[list[dict[str, str]]] | None = None,
) -> dict[str, float]:
    """Run (or resume) PPO-family training; returns the last step's metrics.

    `reward_fn`, `cost_fn` and `prompts` replace the model folders and prompt files (for
    programmatic rewards and tests).
    """
    _check_models(cfg, algorithm, reward_fn, cost_fn)
    set_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if cfg.dry_run:
        print(memory_estimate(cfg, algorithm), flush=True)
        return {}
    acc = make_accelerator(cfg)
    check_rl_engine(acc)
    if acc.is_main_process:
        print(memory_estimate(cfg, algorithm), flush=True)
    dialogues = prompts if prompts is not None else training_prompts(cfg, acc.is_main_process)
    models = build_models(cfg, algorithm, reward_fn, cost_fn, acc.device)
    out = write_run_config(cfg, algorithm)
    total = cfg.max_steps
    critics = [c for c in (models.reward_critic, models.cost_critic) if c is not None]
    actor_opt = make_optimizer(models.actor, cfg.weight_decay, cfg.learning_rate)
    critic_opt = torch.optim.AdamW(
        [g for c in critics for g in param_groups(c, cfg.weight_decay)], lr=cfg.critic_learning_rate or cfg.learning_rate
    )
    schedulers = [make_scheduler(actor_opt, cfg, total), make_scheduler(critic_opt, cfg, total)]
    prepared = acc.prepare(models.actor, *critics, actor_opt, critic_opt)
    models.actor, critics, (actor_opt, critic_opt) = prepared[0], list(prepared[1:-2]), prepared[-2:]
    models.reward_critic, models.cost_critic = critics[0], (critics[1] if len(critics) > 1 else None)
    for scheduler in schedulers:
        acc.register_for_checkpointing(scheduler)
    lagrange = LagrangeMultiplier(cfg.lambda_init, cfg.lambda_lr, cfg.cost_limit, cfg.lambda_max, cfg.episode_cost_window,
                                  cfg.lambda_update_delay, cfg.lambda_optimizer)
    state = resume_state(acc, out) if cfg.resume else {}
    start = state.get("step", 0)
    if "lagrange" in state:
        lagrange.load_state_dict(state["lagrange"])
    logger = MetricsLogger(out, resume_step=start, enabled=acc.is_main_process)
    metrics: dict[str, float] = {}
    with progress_bar(acc) as progress:
        task = progress.add_task(algorithm, total=total, completed=start)
        for step in range(start + 1, total + 1):
            batch = _prompt_batch(dialogues, cfg, step, acc.process_index, acc.num_processes)
            # Each prompt is sampled with a seed keyed by its global draw: the same prompts give the
            # same rollouts on 1 process or N, at any rollout batch split.
            seeds = [row_seed(cfg.seed, draw) for draw in _draws(cfg, step, acc.process_index, acc.num_processes)]
            metrics = _rl_step(cfg, algorithm, models, acc, actor_opt, critic_opt, lagrange, batch, seeds)
            for scheduler in schedulers:
                scheduler.step()
            if step % cfg.log_every == 0 or step == total:
                logger.log(step, metrics)
            progress.update(task, advance=1, description=f"reward {metrics['train/reward']:.3f}")
            if (cfg.save_every and step % cfg.save_every == 0) or step == total:
                save_checkpoint(acc, out, step, cfg.keep_checkpoints, {"lagrange": lagrange.state_dict()})
    if acc.is_main_process:
        save_policy(acc.unwrap_model(models.actor), models.tokenizer, out / "model")
        (out / "final_metrics.json").write_text(json.dumps({"step": total, **metrics}, indent=2))
    logger.close()
    acc.wait_for_everyone()
    return metrics


def _check_models(cfg: PPOConfig, algorithm: Algorithm, reward_fn: Scorer | None, cost_fn: Scorer | None) -> None:
    if reward_fn is None and not cfg.reward_model:
        raise ConfigError("reward_model: required (a folder from `safealign train reward`)")
    if algorithm != "ppo" and cost_fn is None and not cfg.cost_model:
        raise ConfigError(f"cost_model: required for {algorithm} (a folder from `safealign train cost`)")


def build_models(cfg: PPOConfig, algorithm: Algorithm, reward_fn: Scorer | None, cost_fn: Scorer | None,
                 device: torch.device) -> _Models:
    """Every model of a run, in one place: on `device` and in `cfg.dtype`.

    actor (LoRA when configured); reference = a frozen copy of the actor, or None when the
    actor has adapters (the reference is then the actor with them disabled); reward and
    cost scorers, frozen; reward critic and, for ppo-lag, cost critic (`_critic`). The
    trainable ones are prepared by accelerate afterwards; the frozen ones stay as placed here.
    """
    actor, tokenizer = load_policy(cfg.actor, dtype=cfg.dtype, lora=cfg.lora, gradient_checkpointing=cfg.gradient_checkpointing)
    actor.to(device)
    reference = None if cfg.lora is not None else copy.deepcopy(actor).eval().requires_grad_(False)
    if reward_fn is None and cfg.reward_model == LENGTH_REWARD:
        reward_fn = LengthScorer(cfg.max_new_tokens)
    reward = reward_fn or ModelScorer(cfg.reward_model, dtype=cfg.dtype).to(device)
    cost = cost_fn or (ModelScorer(cfg.cost_model, dtype=cfg.dtype).to(device) if cfg.cost_model else None)
    reward_critic = _critic(cfg, cfg.reward_model if reward_fn is None else None).to(device)
    cost_critic = _critic(cfg, cfg.cost_model if cost_fn is None else None).to(device) if algorithm == "ppo-lag" else None
    return _Models(actor, tokenizer, reference, reward_critic, cost_critic, reward, cost)


def _critic(cfg: PPOConfig, score_model: str | None) -> ScoreModel:
    kwargs = {"lora": cfg.lora, "gradient_checkpointing": cfg.gradient_checkpointing, "dtype": cfg.dtype}
    source = critic_source(cfg, score_model)
    if source != cfg.actor:
        critic = ScoreModel.from_pretrained(source, kind="critic", **kwargs)
        if critic.causal:
            return critic
        print(f"critic: {source} is not a causal model (its value at a token would see later tokens); "
              "its critic starts from the actor", flush=True)
    return ScoreModel.from_base(cfg.actor, kind="critic", **kwargs)


def critic_source(cfg: PPOConfig, score_model: str | None, note: bool = True) -> str:
    """Where a critic starts: the score model (critic_init: score-models) or the actor.

    A critic reads the actor's token ids, so a score model on another tokenizer (say a MiniLM
    cost model next to a SmolLM2 actor) cannot start it: the actor does, with a note. (So does
    a bidirectional one, found when `_critic` loads it.) Without tokenizers to compare (a
    dry run's bare architecture config) the configured source stands.
    """
    if cfg.critic_init != "score-models" or not score_model:
        return cfg.actor
    try:
        same = same_tokenizer(score_model, cfg.actor)
    except (OSError, ValueError):
        return score_model
    if same:
        return score_model
    if note:
        print(f"critic: {score_model} uses another tokenizer than the actor; its critic starts from the actor", flush=True)
    return cfg.actor


def same_tokenizer(a: str, b: str) -> bool:
    """Whether two models map text to the same token ids (same vocabulary)."""
    first, second = load_score_tokenizer(a), load_score_tokenizer(b)
    return first.get_vocab() == second.get_vocab()


def _prompt_batch(dialogues: list, cfg: PPOConfig, step: int, rank: int, world: int) -> list:
    """This process's prompts for `step`: a seeded permutation per pass, cycled, sharded."""
    return [dialogues[_prompt_index(cfg, i, len(dialogues))] for i in _draws(cfg, step, rank, world)]


def _draws(cfg: PPOConfig, step: int, rank: int, world: int) -> range:
    """The global draw numbers of this process's prompts at `step` (each one's sampling seed is keyed by it)."""
    per_step = cfg.rollout_batch_size * world
    return range((step - 1) * per_step + rank, step * per_step, world)


def _prompt_index(cfg: PPOConfig, draw: int, n: int) -> int:
    epoch, pos = divmod(draw, n)
    return _pass_order(cfg.seed, epoch, n)[pos]


@functools.lru_cache(maxsize=4)
def _pass_order(seed: int, epoch: int, n: int) -> list[int]:
    """The prompt order of one pass, shuffled once per pass (not once per prompt drawn)."""
    order = list(range(n))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return order


def _rl_step(cfg: PPOConfig, algorithm: Algorithm, m: _Models, acc: Any, actor_opt: Any, critic_opt: Any,
             lagrange: LagrangeMultiplier, batch: list, seeds: list[int] | None = None) -> dict[str, float]:
    settings = cfg.sampling()
    prompt_ids, prompt_mask = encode_prompts(m.tokenizer, batch, cfg.max_prompt_length)
    # Rollouts, old log-probs and old values without dropout (eval mode), as TRL and safe-rlhf
    # compute them; the update then runs in training mode.
    m.actor.eval()
    for critic in (m.reward_critic, m.cost_critic):
        if critic is not None:
            critic.eval()
    # generate on the unwrapped module (DDP's wrapper has none; FSDP2's hooks gather): see train/sharded.py
    rollout = sample(acc.unwrap_model(m.actor), m.tokenizer, prompt_ids.to(acc.device), prompt_mask.to(acc.device),
                     settings, seeds)
    mask = rollout.response_mask.float()  # size = (B, T)
    with torch.no_grad():  # forwards through the prepared models: the engines gather shards in them
        old_logp, entropy = token_log_probs(m.actor, rollout, with_entropy=True, temperature=cfg.temperature)
        with (acc.unwrap_model(m.actor).disable_adapter() if m.reference is None else nullcontext()):
            ref_logp, _ = token_log_probs(m.actor if m.reference is None else m.reference, rollout, temperature=cfg.temperature)
        reward = m.reward(batch, rollout.responses, rollout.response_ids).to(acc.device).clamp(-cfg.score_clip, cfg.score_clip)
        cost = None if m.cost is None else m.cost(batch, rollout.responses, rollout.response_ids).to(acc.device).clamp(-cfg.score_clip, cfg.score_clip)
        kl = old_logp - ref_logp  # size = (B, T)
        episode_costs = [float(c) for c in gather_object(cost.tolist())] if cost is not None else []
        if algorithm == "ppo-lag":
            lagrange.update(episode_costs)
        lengths = mask.sum(-1)
        scaled = standardise(reward, acc.gather(reward)) if cfg.reward_scaling == "batch" else reward
        sequence_reward = scaled - cfg.shaping_lambda * cost if algorithm == "ppo-shaping" else scaled
        sequence_reward = length_adjusted_reward(sequence_reward, lengths, cfg.max_new_tokens, cfg.length_penalty, cfg.long_outputs)
        if cfg.long_outputs == "skip":  # an answer that never ended takes no part in the update
            mask = mask * (lengths < cfg.max_new_tokens).to(mask.dtype).unsqueeze(-1)
        old_values = critic_values(m.reward_critic, rollout)
        adv_r, ret_r = gae(shaped_rewards(sequence_reward, kl, mask, cfg.kl_coef, -1.0), old_values, mask, cfg.gamma, cfg.gae_lambda)
        advantages = adv_r
        if algorithm == "ppo-lag":
            old_cost_values = critic_values(m.cost_critic, rollout)
            adv_c, ret_c = gae(shaped_rewards(cost, kl, mask, cfg.kl_coef, +1.0), old_cost_values, mask, cfg.gamma, cfg.gae_lambda)
            advantages = lagrangian_advantage(adv_r, adv_c, lagrange.value)
    losses = _update(cfg, m, acc, actor_opt, critic_opt, rollout, old_logp, advantages, mask,
                     [(m.reward_critic, old_values, ret_r)] + ([(m.cost_critic, old_cost_values, ret_c)] if algorithm == "ppo-lag" else []))
    mask = rollout.response_mask.float()  # the metrics cover every answer, skipped ones too
    metrics = {
        "train/reward": _mean(acc, reward),
        "train/kl": _mean(acc, (kl * mask).sum(-1)),
        "train/entropy": _mean(acc, masked_mean(entropy, mask).reshape(1)),
        "train/response_length": _mean(acc, lengths),
        **losses,
    }
    if cost is not None:
        metrics["train/cost"] = _mean(acc, cost)
        j_c = lagrange.episode_cost if algorithm == "ppo-lag" else sum(episode_costs) / len(episode_costs)
        metrics.update({"train/episode_cost": j_c, "train/constraint_violation": j_c - cfg.cost_limit})
    if algorithm == "ppo-lag":
        metrics["train/lambda"] = lagrange.value
    return metrics


def _update(cfg: PPOConfig, m: _Models, acc: Any, actor_opt: Any, critic_opt: Any, rollout: Rollout, old_logp: Tensor,
            advantages: Tensor, mask: Tensor, critics: list[tuple[Any, Tensor, Tensor]]) -> dict[str, float]:
    sums = {"train/actor_loss": 0.0, "train/reward_critic_loss": 0.0, "train/cost_critic_loss": 0.0,
            "train/approx_kl": 0.0, "train/clip_fraction": 0.0}
    n = 0
    batch = rollout.sequences.size(0)
    m.actor.train()
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(batch).tolist()
        for start in range(0, batch, cfg.minibatch_size):
            idx = order[start : start + cfg.minibatch_size]
            sub = _subset(rollout, idx)
            logp, _ = token_log_probs(m.actor, sub, temperature=cfg.temperature)
            actor_loss = ppo_policy_loss(logp, old_logp[idx], advantages[idx], mask[idx], cfg.clip_range)
            with torch.no_grad():  # how far the update moved π from the sampler: 0 on the first minibatch
                log_ratio = logp - old_logp[idx]
                sums["train/approx_kl"] += masked_mean((log_ratio.exp() - 1) - log_ratio, mask[idx]).item()
                sums["train/clip_fraction"] += masked_mean(((log_ratio.exp() - 1).abs() > cfg.clip_range).float(), mask[idx]).item()
            acc.backward(actor_loss)
            clip_gradients(acc, m.actor.parameters(), cfg.max_grad_norm)
            step_optimizer(actor_opt, acc)
            critic_loss = 0.0
            for (critic, old_values, returns), name in zip(critics, ("train/reward_critic_loss", "train/cost_critic_loss")):
                critic.train()
                value_loss = clipped_value_loss(critic_values(critic, sub), old_values[idx], returns[idx], mask[idx], cfg.value_clip)
                sums[name] += value_loss.item()
                critic_loss = critic_loss + value_loss
            acc.backward(critic_loss)
            clip_gradients(acc, [p for c, _, _ in critics for p in c.parameters()], cfg.max_grad_norm)
            step_optimizer(critic_opt, acc)
            sums["train/actor_loss"] += actor_loss.item()
            n += 1
    if len(critics) == 1:
        del sums["train/cost_critic_loss"]
    # Every process's minibatches count: one all-reduce of the sums (each process ran n minibatches).
    means = acc.reduce(torch.tensor(list(sums.values()), device=acc.device) / n, "mean").tolist()
    return dict(zip(sums, means))


def _subset(r: Rollout, idx: list[int]) -> Rollout:
    return Rollout(r.sequences[idx], r.attention_mask[idx], r.response_mask[idx], r.prompt_width,
                   [r.responses[i] for i in idx], [r.response_ids[i] for i in idx])


def _mean(acc: Any, values: Tensor) -> float:
    return acc.reduce(values.float().mean().reshape(1), "mean").item()


def memory_estimate(cfg: PPOConfig, algorithm: Algorithm) -> str:
    """The memory a run needs, from the model configs alone, as a printable table."""
    length = cfg.max_prompt_length + cfg.max_new_tokens
    activations = memory.activation_bytes(cfg.actor, cfg.minibatch_size, length, cfg.dtype, cfg.gradient_checkpointing)
    sharding = memory.read_accelerate_config(cfg.accelerate_config) if cfg.accelerate_config else None
    table = "memory estimate (before loading):\n" + memory.format_table(memory_rows(cfg, algorithm), activations, sharding)
    if sharding is not None and sharding.description.startswith("DeepSpeed"):
        table += ("\nnote: PPO refuses DeepSpeed at launch (one engine per trained model is not built yet); "
                  "this is what ZeRO would need. Shard with FSDP2 (configs/scale/accelerate_fsdp.yaml).")
    return table


def memory_rows(cfg: PPOConfig, algorithm: Algorithm) -> list[memory.ModelMemory]:
    """One row per model that `build_models` builds, with its parameters and their bytes."""
    actor_total, actor_trainable = memory.count_parameters(cfg.actor, cfg.lora)
    weight_bytes = memory.DTYPE_BYTES[cfg.dtype]
    # As `build_models` places them: every weight in cfg.dtype, LoRA adapters in fp32 (peft upcasts them).
    trainable_bytes = 4 if cfg.lora is not None else weight_bytes
    rows = [memory.ModelMemory("actor", actor_total, actor_trainable, weight_bytes, trainable_bytes)]
    if cfg.lora is None:
        rows.append(memory.ModelMemory("reference", actor_total, 0, weight_bytes))
    reward_model = None if cfg.reward_model == LENGTH_REWARD else cfg.reward_model  # the length reward has no weights
    scorers = [("reward", reward_model)] + ([("cost", cfg.cost_model)] if cfg.cost_model else [])
    critics = [("reward critic", reward_model)] + ([("cost critic", cfg.cost_model)] if algorithm == "ppo-lag" else [])
    for role, path in scorers:
        if path:
            total, _ = memory.count_parameters(path, score_head=True)
            rows.append(memory.ModelMemory(role, total, 0, weight_bytes))
    for role, path in critics:
        source = critic_source(cfg, path, note=False)
        rows.append(memory.ModelMemory(role, *memory.count_parameters(source, cfg.lora, score_head=True), weight_bytes, trainable_bytes))
    return rows
