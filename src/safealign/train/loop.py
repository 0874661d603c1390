"""The one training loop: accelerate, accumulation, schedule, evaluation, checkpoints, resume.

An algorithm hands the loop a `Task` (model, examples, collate, loss, per-example eval
values, export). The loop owns everything else, so every algorithm gets the same
behaviour: seeded length-grouped batches sharded over processes (one process and two
see the same global batches), resumable checkpoints (model, optimizer, scheduler, RNG
states and the data position), metrics with fixed names, and a stop with a clear message
on NaN/Inf (the last good checkpoint stays).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from safealign.models.selfcheck import assert_close, verified
from safealign.train.batching import epoch_batches, micro_batches, shard
from safealign.train.config import LoopConfig, RunConfig
from safealign.train.logger import MetricsLogger

Batch = dict[str, Any]
STATE_FILE = "trainer_state.json"


class TrainingError(RuntimeError):
    """Training cannot go on (NaN/Inf, no data); the message says why and what was kept."""


@dataclass
class Task:
    """What the loop needs from an algorithm."""

    model: nn.Module
    train_examples: Sequence[Any]
    eval_examples: Sequence[Any]
    lengths: Sequence[int]  # tokens per training example, for length grouping
    collate: Callable[[list[Any]], Batch]
    loss: Callable[[nn.Module, Batch], tuple[Tensor, dict[str, Tensor]]]  # loss, batch-mean metrics
    evaluate: Callable[[nn.Module, Batch], dict[str, Tensor]]  # per-example values, size = (N,)
    export: Callable[[nn.Module, Path], None]  # write the final model folder
    summarize: Callable[[dict[str, list[float]]], dict[str, float]] | None = None


def train(task: Task, cfg: LoopConfig, accelerator: Accelerator | None = None) -> dict[str, float]:
    """Run (or resume) training; returns the final evaluation metrics."""
    acc = accelerator or make_accelerator(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    world = acc.num_processes
    global_batch = cfg.per_device_batch_size * world * cfg.gradient_accumulation_steps
    steps_per_epoch = len(task.train_examples) // global_batch
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{len(task.train_examples)} training examples do not fill one global batch of {global_batch} "
            f"(per_device_batch_size × processes × gradient_accumulation_steps)"
        )
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    optimizer = make_optimizer(task.model, cfg.weight_decay, cfg.learning_rate)
    scheduler = make_scheduler(optimizer, cfg, total)
    model, optimizer = acc.prepare(task.model, optimizer)
    # Stepped by hand, not prepared: accelerate would step it once per process.
    acc.register_for_checkpointing(scheduler)

    start = resume_state(acc, out).get("step", 0) if cfg.resume else 0
    logger = MetricsLogger(out, resume_step=start, enabled=acc.is_main_process)
    if start and acc.is_main_process:
        print(f"resumed from step {start} of {total}")
    evaluate = lambda: _evaluate(task, model, acc, cfg)  # noqa: E731
    batches: list[list[int]] = []
    epoch_cached = -1
    last_eval: dict[str, float] = {}
    progress = progress_bar(acc)
    with progress:
        task_id = progress.add_task("train", total=total, completed=start)
        for step in range(start + 1, total + 1):
            epoch, position = divmod(step - 1, steps_per_epoch)
            if epoch != epoch_cached:
                batches = epoch_batches(task.lengths, global_batch, cfg.seed, epoch, cfg.group_by_length)
                epoch_cached = epoch
            mine = shard(batches[position], acc.process_index, world)
            metrics = _step(task, model, optimizer, scheduler, acc, cfg, mine, step, out)
            metrics["train/epoch"] = epoch + (position + 1) / steps_per_epoch
            if step % cfg.log_every == 0 or step == total:
                logger.log(step, metrics)
            progress.update(task_id, advance=1, description=f"loss {metrics['train/loss']:.4f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step != total and task.eval_examples:
                last_eval = evaluate()
                logger.log(step, last_eval)
                print_metrics(acc, step, last_eval)
            if cfg.save_every and step % cfg.save_every == 0 and step != total:
                save_checkpoint(acc, out, step, cfg.keep_checkpoints)
    if task.eval_examples:
        last_eval = evaluate()
        logger.log(total, last_eval)
        print_metrics(acc, total, last_eval)
    if start < total:
        save_checkpoint(acc, out, total, cfg.keep_checkpoints)
    if acc.is_main_process:
        task.export(acc.unwrap_model(model), out / "model")
        (out / "final_metrics.json").write_text(json.dumps({"step": total, **last_eval}, indent=2))
    logger.close()
    acc.wait_for_everyone()
    return last_eval


def make_accelerator(cfg: RunConfig) -> Accelerator:
    """An Accelerator for this machine; several CPU processes (torchrun) talk over gloo."""
    from accelerate.state import AcceleratorState

    distributed_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # AcceleratorState is a process-wide singleton; a pipeline trains several models in one
    # process with different precisions, so forget the previous run's settings (the
    # process group, in PartialState, is kept). `_reset_state` is private: without it, an
    # Accelerator with other settings than the process's first refuses to start.
    reset = getattr(AcceleratorState, "_reset_state", None)
    if callable(reset):
        reset()
    try:
        acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=distributed_cpu)
    except ValueError as error:
        raise TrainingError(f"cannot set up accelerate for mixed_precision={cfg.mixed_precision!r} in this process "
                            f"({error}); run this stage in a process of its own") from error
    if acc.mixed_precision != cfg.mixed_precision:
        raise TrainingError(f"accelerate kept mixed_precision={acc.mixed_precision!r} from an earlier run in this "
                            f"process, not {cfg.mixed_precision!r}; run this stage in a process of its own")
    return acc


def _step(task: Task, model: nn.Module, optimizer, scheduler, acc: Accelerator, cfg: LoopConfig,
          indices: list[int], step: int, out: Path) -> dict[str, float]:
    chunks = micro_batches(indices, cfg.per_device_batch_size)
    sums: dict[str, Tensor] = {}
    tokens = 0
    started = time.perf_counter()
    # Every step: a model's root can say training while a submodule is in eval mode
    # (transformers loads backbones in eval mode; evaluations and reference passes switch).
    model.train()
    for i, chunk in enumerate(chunks):
        batch = _to_device(task.collate([task.train_examples[j] for j in chunk]), acc.device)
        tokens += int(batch.get("num_tokens", 0))
        # Gradients are all-reduced once per optimizer step, on the last micro-batch.
        sync = nullcontext() if i == len(chunks) - 1 else acc.no_sync(model)
        with sync, acc.autocast():
            loss, extra = task.loss(model, batch)
        acc.backward(loss / len(chunks))
        for key, value in {"train/loss": loss, **extra}.items():
            sums[key] = sums.get(key, 0) + value.detach().float() / len(chunks)
    grad_norm = clip_gradients(acc, model.parameters(), cfg.max_grad_norm)
    # One all-reduce for all metrics; the token count rides along as a mean (× processes = sum).
    names = list(sums)
    local = torch.stack([sums[k].reshape(()) for k in names] + [torch.tensor(float(tokens), device=acc.device)])
    means = acc.reduce(local.double(), "mean").tolist()
    reduced = dict(zip(names, means[:-1]))
    if not math.isfinite(reduced["train/loss"]) or not math.isfinite(float(grad_norm)):
        what = "loss" if not math.isfinite(reduced["train/loss"]) else "gradient norm"
        kept = latest_checkpoint(out)
        raise TrainingError(
            f"step {step}: the {what} is not finite (NaN/Inf); training stopped. "
            + (f"The last good checkpoint is {kept}." if kept else "No checkpoint was saved yet.")
            + " Try a lower learning_rate, mixed_precision: no, or check the data."
        )
    step_optimizer(optimizer, acc)
    scheduler.step()
    seconds = time.perf_counter() - started
    reduced["train/grad_norm"] = float(grad_norm)
    reduced["train/lr"] = scheduler.get_last_lr()[0]
    if tokens:
        reduced["train/tokens_per_second"] = means[-1] * acc.num_processes / seconds
    return reduced


@torch.no_grad()
def _evaluate(task: Task, model: nn.Module, acc: Accelerator, cfg: LoopConfig) -> dict[str, float]:
    model.eval()
    mine = list(range(acc.process_index, len(task.eval_examples), acc.num_processes))
    values: dict[str, list[float]] = {}
    for chunk in micro_batches(mine, cfg.per_device_batch_size):
        batch = _to_device(task.collate([task.eval_examples[j] for j in chunk]), acc.device)
        with acc.autocast():
            for key, tensor in task.evaluate(model, batch).items():
                values.setdefault(key, []).extend(tensor.float().cpu().tolist())
    if acc.num_processes > 1:
        gathered = gather_object([values])
        values = {k: [v for part in gathered for v in part.get(k, [])] for k in gathered[0]}
    if task.summarize is not None:
        return task.summarize(values)
    return {key: _nanmean(vals) for key, vals in values.items()}


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def save_checkpoint(acc: Accelerator, out: Path, step: int, keep: int, extra: dict[str, Any] | None = None) -> Path:
    """Save model, optimizer, scheduler and RNG states; the state file is written last.

    The checkpoint is written into a temporary folder and renamed, so a run killed while
    saving never leaves a half-written checkpoint that looks complete.
    """
    root = out / "checkpoints"
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **(extra or {})}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint in a run folder, if any."""
    found = _checkpoints(out)
    return found[-1] if found else None


def _checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def resume_state(acc: Accelerator, out: Path) -> dict[str, Any]:
    """Load the newest complete checkpoint into the prepared objects; its saved state ({} if none)."""
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        return {}
    acc.load_state(str(checkpoint))
    return json.loads((checkpoint / STATE_FILE).read_text())


def make_optimizer(model: nn.Module, weight_decay: float, learning_rate: float) -> torch.optim.Optimizer:
    """AdamW, fused where torch has a fused kernel (on CPU the default per-tensor loop is ~3× slower)."""
    groups = param_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    except (RuntimeError, ValueError):  # parameters of a kind the fused kernel does not take
        return torch.optim.AdamW(groups, lr=learning_rate)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, total: int):
    """Warm-up then the configured decay, over `total` optimizer steps."""
    from transformers import get_scheduler

    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total)


def clip_gradients(acc: Accelerator, parameters: Any, max_norm: float | None) -> Tensor:
    """Clip the gradient norm to `max_norm` (None: measure only); returns the norm before clipping.

    torch's own clip where accelerate's would come down to it (one process or DDP, no fp16
    loss scaler): accelerate's adds a package-version check and a DTensor scan per call,
    0.2 ms a step. FSDP, DeepSpeed, XLA and fp16 go through accelerate.
    """
    from accelerate.utils import DistributedType

    limit = max_norm or float("inf")
    plain = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    if acc.distributed_type in plain and acc.scaler is None and verified(
        ("torch clip_grad_norm_", acc.distributed_type), lambda: _check_clip(acc),
        what="torch's clip_grad_norm_ in place of accelerate's", fallback="gradients are clipped by accelerate",
    ):
        return torch.nn.utils.clip_grad_norm_(parameters, limit)
    return acc.clip_grad_norm_(parameters, limit)


def _check_clip(acc: Accelerator) -> None:
    """Raise unless accelerate's clip_grad_norm_ equals torch's (norm and clipped gradients)."""
    grads = [torch.tensor([3.0, -4.0]), torch.tensor([[12.0]])]
    ours, theirs = ([torch.nn.Parameter(torch.zeros_like(g, device=acc.device)) for g in grads] for _ in range(2))
    for a, b, g in zip(ours, theirs, grads):
        a.grad, b.grad = g.to(acc.device, copy=True), g.to(acc.device, copy=True)
    assert_close("gradient norm", torch.nn.utils.clip_grad_norm_(ours, 6.5), torch.as_tensor(acc.clip_grad_norm_(theirs, 6.5)))
    for a, b in zip(ours, theirs):
        assert_close("clipped gradient", a.grad, b.grad)


def step_optimizer(optimizer: Any, acc: Accelerator) -> None:
    """`optimizer.step()` then `zero_grad(set_to_none=True)`, on accelerate's prepared optimizer.

    Straight to the torch optimizer inside accelerate's wrapper where the wrapper would only
    pass the call on: no loss scaler (fp16), XLA or DeepSpeed, and gradients synchronised on
    every step, as the loops here do. The wrapper looks for optional packages on every `step`
    and inspects `zero_grad`'s signature on every call: about 0.3 ms per step, 3 % of a small
    model's step on CPU.
    """
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.utils import DistributedType

    plain = type(optimizer) is AcceleratedOptimizer and getattr(optimizer, "scaler", True) is None
    if plain and acc.distributed_type != DistributedType.XLA and acc.sync_gradients and verified(
        ("direct optimizer step",), _check_direct_step,
        what="stepping the torch optimizer inside accelerate's wrapper", fallback="accelerate's wrapper steps it",
    ):
        optimizer = optimizer.optimizer
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _check_direct_step() -> None:
    """Raise unless stepping the wrapped torch optimizer moves parameters as the wrapper's `step` does."""
    from accelerate.optimizer import AcceleratedOptimizer

    params = [torch.nn.Parameter(torch.tensor([1.0, -2.0])) for _ in range(2)]
    # SGD with momentum: linear in the gradients, so a wrapper that changes them shows.
    wrapped = [AcceleratedOptimizer(torch.optim.SGD([p], lr=0.1, momentum=0.9), device_placement=False) for p in params]
    if not all(isinstance(w.optimizer, torch.optim.Optimizer) and w.optimizer.param_groups[0]["params"][0] is p
               for w, p in zip(wrapped, params)):
        raise RuntimeError("AcceleratedOptimizer no longer keeps the torch optimizer in `.optimizer`")
    for _ in range(2):
        for p in params:
            p.grad = torch.tensor([0.5, 0.25])
        wrapped[0].step()
        wrapped[0].zero_grad(set_to_none=True)
        wrapped[1].optimizer.step()
        wrapped[1].optimizer.zero_grad(set_to_none=True)
    assert_close("parameters after two steps", params[1], params[0], tolerance=1e-7)
    if params[1].grad is not None:
        raise RuntimeError("zero_grad(set_to_none=True) left a gradient")


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def progress_bar(acc: Accelerator) -> Progress:
    """A rich progress bar on the main process."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not acc.is_main_process,
        transient=False,
    )


def print_metrics(acc: Accelerator, step: int, metrics: dict[str, float]) -> None:
    """One line of metrics on the main process."""
    if acc.is_main_process:
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        print(f"step {step}: {shown}", flush=True)
