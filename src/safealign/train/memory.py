"""What a run will need, estimated before anything is loaded (meta-device models, no weights)."""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ModelMemory:
    """One model of a run: its parameter count and how it is trained."""

    role: str
    params: int
    trainable: int
    weight_bytes: int  # bytes per frozen weight
    trainable_bytes: int = 4  # bytes per trainable weight: LoRA adapters are fp32 (peft), full weights as loaded

    @property
    def weights(self) -> float:
        """Bytes of the weights, frozen and trainable."""
        return (self.params - self.trainable) * self.weight_bytes + self.trainable * self.trainable_bytes

    @property
    def training_state(self) -> float:
        """Gradients (fp32) and AdamW's two moments (fp32) for the trainable parameters."""
        return self.trainable * 12


def count_parameters(name_or_path: str, lora: object | None = None, score_head: bool = False) -> tuple[int, int]:
    """(total, trainable) parameters of a model, instantiated on the meta device (no download of weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from safealign.models.registry import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(name_or_path))
    with init_empty_weights():
        model = (AutoModel if score_head else AutoModelForCausalLM).from_config(config)
    model.tie_weights()  # from_config leaves tied embeddings untied; parameters() dedups once tied
    total = sum(p.numel() for p in model.parameters())
    head = getattr(config, "hidden_size", 0) + 1 if score_head else 0  # the linear score head
    if lora is None:
        return total + head, total + head
    from peft import LoraConfig, get_peft_model

    targets = getattr(lora, "target_modules", None)
    with init_empty_weights():
        peft_model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=targets or None))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad) + head
    return total + trainable, trainable


@dataclass
class Sharding:
    """How a launch spreads the state over devices (read from an accelerate config file)."""

    processes: int = 1
    shard_weights: bool = False  # ZeRO-3 / FSDP FULL_SHARD
    shard_training_state: bool = False  # ZeRO-2/3 / FSDP (gradients and optimizer states)
    description: str = "one process"


def read_accelerate_config(path: str) -> Sharding:
    """The process count and sharding of an `accelerate launch --config_file` YAML (DDP, DeepSpeed ZeRO, FSDP)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    processes = int(cfg.get("num_processes", 1))
    kind = str(cfg.get("distributed_type", "NO")).upper()
    if kind == "DEEPSPEED":
        stage = int((cfg.get("deepspeed_config") or {}).get("zero_stage", 0))
        return Sharding(processes, stage >= 3, stage >= 2, f"DeepSpeed ZeRO-{stage} on {processes} processes")
    if kind == "FSDP":
        strategy = str((cfg.get("fsdp_config") or {}).get("fsdp_sharding_strategy", "FULL_SHARD")).upper()
        full = strategy in ("FULL_SHARD", "1", "HYBRID_SHARD")
        return Sharding(processes, full, True, f"FSDP {strategy} on {processes} processes")
    return Sharding(processes, False, False, f"{kind} on {processes} processes")


def format_table(rows: list[ModelMemory], activations: float, sharding: Sharding | None = None) -> str:
    """A plain-text table of the estimate per device (GiB), for printing before a run."""
    sharding = sharding or Sharding()
    gib = 2**30
    w_div = sharding.processes if sharding.shard_weights else 1
    t_div = sharding.processes if sharding.shard_training_state else 1
    lines = [f"per device, {sharding.description}:",
             f"{'model':<16}{'params':>12}{'trainable':>12}{'weights':>10}{'grad+adam':>11}"]
    for r in rows:
        lines.append(f"{r.role:<16}{r.params / 1e6:>11.1f}M{r.trainable / 1e6:>11.2f}M"
                     f"{r.weights / w_div / gib:>9.2f}G{r.training_state / t_div / gib:>10.2f}G")
    total = sum(r.weights / w_div + r.training_state / t_div for r in rows) + activations
    lines.append(f"{'activations':<16}{'':>24}{activations / gib:>9.2f}G  (rough: batch × length × hidden × layers)")
    lines.append(f"{'total':<16}{'':>24}{total / gib:>9.2f}G")
    return "\n".join(lines)


def activation_bytes(name_or_path: str, batch: int, length: int, dtype: str, checkpointing: bool) -> float:
    """Rough activation memory of one training forward/backward (Korthikanti et al. 2022: ~34·s·b·h per layer)."""
    from transformers import AutoConfig

    from safealign.models.registry import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(name_or_path))
    layers = getattr(config, "num_hidden_layers", 1)
    hidden = getattr(config, "hidden_size", 1)
    vocab = getattr(config, "vocab_size", 0)
    per_layer = 34 * length * batch * hidden * DTYPE_BYTES[dtype] / 2
    kept_layers = 1 if checkpointing else layers
    logits = batch * length * vocab * 4 * 2  # fp32 logits and their log-softmax
    return per_layer * kept_layers + (layers * length * batch * hidden * DTYPE_BYTES[dtype] if checkpointing else 0) + logits
