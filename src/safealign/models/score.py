"""Score models: a backbone plus a linear head read at the last non-padding token.

Reward, cost, critic, multi-attribute (HelpSteer) and moderation heads are all this one
class with a different `kind`, `score_dim` and `score_names`. A saved folder is a plain
Hugging Face backbone folder (loadable with ``AutoModel`` alone, without peft) plus two
small files for the head::

    <folder>/
        config.json, model.safetensors    # backbone (LoRA adapters merged in)
        score_head.safetensors            # head.weight, head.bias, normaliser buffers
        score_config.json                 # kind, score_dim, score_names, normalized, ...
        tokenizer files                   # when a tokenizer was passed
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import safealign
from safealign.models.loading import enable_gradient_checkpointing
from safealign.models.packing import PackingRule, can_pack, is_causal, mask_for, right_padded
from safealign.models.readout import can_narrow, group_places, narrow_top_layer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SCORE_CONFIG_NAME = "score_config.json"
SCORE_HEAD_NAME = "score_head.safetensors"
_NORMALIZER_KEYS = ("norm_count", "norm_mean", "norm_var")


@dataclass
class LoraSettings:
    """LoRA adapters on the backbone (through peft); the score head stays fully trainable."""

    r: int = 8
    """Rank of the adapter matrices."""
    alpha: int = 16
    """Scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt; None means peft's default for the architecture, else "all-linear"."""


def _resolve(name_or_path: str | os.PathLike[str]) -> str:
    # The registry knows offline aliases ("minilm", ...); without it, names go to transformers as given.
    try:
        from safealign.models.registry import resolve_model
    except ImportError:
        return os.fspath(name_or_path)
    return resolve_model(name_or_path)


def _hidden_size(backbone: nn.Module) -> int:
    # get_text_config: multimodal configs keep the language model's size in a sub-config.
    config = backbone.config.get_text_config()
    for attr in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    raise ValueError(f"Cannot find the hidden size in {type(config).__name__}.")


class ScoreModel(nn.Module):
    """A transformers base model (``AutoModel``) and ``head = nn.Linear(hidden, score_dim)``.

    `forward` returns raw scores; `score` returns normalised ones when `normalized` is set.
    The running normaliser (count, mean, population variance per score dimension) is stored
    in buffers, so it travels with checkpoints and saved folders.
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        score_dim: int = 1,
        score_names: list[str] | None = None,
        *,
        kind: str = "reward",
        normalized: bool = False,
        base_model: str | None = None,
    ) -> None:
        super().__init__()
        if score_names is None:
            score_names = ["score"] if score_dim == 1 else [f"score_{i}" for i in range(score_dim)]
        if len(score_names) != score_dim:
            raise ValueError(f"score_names has {len(score_names)} names but score_dim is {score_dim}.")
        # Read before any peft wrapping: PeftModel.forward takes **kwargs and hides these.
        params = inspect.signature(backbone.forward).parameters
        # RoBERTa-style embeddings (with `padding_idx`) already number positions from the pad
        # token, offset by padding_idx + 1; 0-based positions from us would shift them all.
        pads_itself = hasattr(getattr(backbone, "embeddings", None), "padding_idx")
        self._takes_position_ids = "position_ids" in params and not pads_itself
        self._takes_use_cache = "use_cache" in params
        self._packable = self._takes_position_ids and can_pack(backbone)
        self.causal = is_causal(backbone)  # a score at a token depends on no later token
        self.backbone = backbone
        self.kind = kind
        self.score_names = list(score_names)
        self.normalized = normalized
        self.base_model = base_model
        self.lora: LoraSettings | None = None  # set by `_prepare`; recorded in score_config.json
        hidden = _hidden_size(backbone)
        # Same dtype as the backbone so FSDP can flatten head and backbone parameters together.
        dtype = next(backbone.parameters()).dtype
        self.head = nn.Linear(hidden, score_dim, dtype=dtype)
        # Normal(1/sqrt(hidden+1)) rather than zeros: a zero head sends no gradient into the
        # backbone (nor LoRA's zero-initialised B) on the first steps, and scores start O(1)
        # and centred on 0, so neither cost sign is favoured at init.
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)
        # float64 statistics (int64 count, which `.to(dtype)` never casts) keep long runs exact.
        self.register_buffer("norm_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("norm_mean", torch.zeros(score_dim, dtype=torch.float64))
        self.register_buffer("norm_var", torch.ones(score_dim, dtype=torch.float64))

    @property
    def score_dim(self) -> int:
        """Number of scores per sequence."""
        return self.head.out_features

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        per_token: bool = False,
        position_ids: torch.Tensor | None = None,
        read_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw scores, shape (B, score_dim), read at each row's last non-padding token.

        Works for right and left padding. ``per_token=True`` returns (B, L, score_dim) for
        PPO critics; it is a flag, not a second method, so DDP/FSDP wrappers see the call.
        Packed pairs (`safealign.models.packing`) pass their 4D bool mask, their
        `position_ids`, and `read_at`, the (row, column) of each score, size = (N, 2).
        """
        if attention_mask.dim() == 4:
            return self._forward_packed(input_ids, attention_mask, position_ids, read_at)
        attention_mask = attention_mask.long()  # size = (B, L)
        kwargs: dict[str, Any] = {"use_cache": False} if self._takes_use_cache else {}  # no generation here
        if self._packable and not per_token and right_padded(attention_mask):
            # In a causal model no real token of a right-padded row sees the padding after it,
            # so the causal mask alone is exact, and attention may skip the upper triangle.
            last = attention_mask.sum(-1) - 1  # size = (B,)
        else:
            if self._takes_position_ids:
                # Positions count real tokens only, so a left-padded row scores as if unpadded.
                kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # size = (B, L)
            kwargs["attention_mask"] = attention_mask
            positions = torch.arange(attention_mask.size(-1), device=attention_mask.device)  # size = (L,)
            last = (attention_mask * positions).argmax(-1)  # size = (B,)
        if per_token:
            return self.head(self.backbone(input_ids=input_ids, **kwargs).last_hidden_state)  # size = (B, L, D)
        if can_narrow(self.backbone):
            with narrow_top_layer(self.backbone, last.unsqueeze(1)):
                end_hidden = self.backbone(input_ids=input_ids, **kwargs).last_hidden_state[:, 0]  # size = (B, H)
        else:
            hidden = self.backbone(input_ids=input_ids, **kwargs).last_hidden_state  # size = (B, L, H)
            end_hidden = hidden[torch.arange(hidden.size(0), device=hidden.device), last]  # size = (B, H)
        return self.head(end_hidden)  # size = (B, D)

    @property
    def packable(self) -> bool:
        """Whether pairs may be packed (`safealign.models.packing`): causal backbones only."""
        return self._packable

    def packing_rule(self) -> PackingRule | None:
        """When to pack a batch of pairs for this model; None when it cannot be packed."""
        return PackingRule.for_config(self.backbone.config) if self._packable else None

    def _forward_packed(
        self, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor | None, read_at: torch.Tensor | None
    ) -> torch.Tensor:
        if not self._packable or position_ids is None or read_at is None:
            raise ValueError("a 4D mask needs a causal backbone, position_ids and read_at (see safealign.models.packing)")
        mask = mask_for(mask, self.backbone, self.head.weight.dtype)  # size = (B, 1, W, W)
        kwargs: dict[str, Any] = {"use_cache": False} if self._takes_use_cache else {}
        if not can_narrow(self.backbone):
            hidden = self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs).last_hidden_state
            return self.head(hidden[read_at[:, 0], read_at[:, 1]])  # size = (N, D)
        places, slot = group_places(read_at, input_ids.size(0))  # size = (B, R), (N,)
        with narrow_top_layer(self.backbone, places.to(input_ids.device)):
            hidden = self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs).last_hidden_state
        return self.head(hidden.reshape(-1, hidden.size(-1))[slot.to(hidden.device)])  # size = (N, D)

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores for inference: normalised when `normalized` is set, raw otherwise."""
        scores = self(input_ids, attention_mask)
        return self.normalize(scores) if self.normalized else scores

    @torch.no_grad()
    def update_normalizer(self, scores: torch.Tensor) -> None:
        """Merge a batch of scores, shape (N, score_dim) or (N,), into the running statistics.

        Chan et al.'s parallel merge, exact for any batch split. Under DDP, gather the scores
        of all processes first so every replica keeps the same statistics.
        """
        batch = scores.detach().to(torch.float64).reshape(-1, self.score_dim)  # size = (N, D)
        n_a, n_b = int(self.norm_count), batch.size(0)
        if n_b == 0:
            return
        mean_b, var_b = batch.mean(0), batch.var(0, unbiased=False)
        delta, total = mean_b - self.norm_mean, n_a + n_b
        m2 = self.norm_var * n_a + var_b * n_b + delta**2 * (n_a * n_b / total)
        self.norm_mean += delta * (n_b / total)
        self.norm_var.copy_(m2 / total)
        self.norm_count.fill_(total)

    def normalize(self, scores: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """(scores - mean) / std with the running statistics; identity before any update.

        A cost model is scaled only, scores / std: its zero is the line between safe (c < 0)
        and unsafe (c > 0), which `cost_limit`, sign accuracy and every "cost > 0" reading
        rely on, so it must not move.
        """
        std = self.norm_var.clamp_min(eps).sqrt().to(scores.dtype)
        if self.kind == "cost":
            return scores / std
        return (scores - self.norm_mean.to(scores.dtype)) / std

    @classmethod
    def from_base(
        cls,
        name_or_path: str | os.PathLike[str],
        score_dim: int = 1,
        score_names: list[str] | None = None,
        *,
        kind: str = "reward",
        dtype: torch.dtype | str = torch.float32,
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
    ) -> ScoreModel:
        """A new score model with a fresh head on a base checkpoint (causal LM or encoder).

        `name_or_path` is a known offline alias, a local folder or a hub id; a causal-LM
        checkpoint gives its base model (the LM head is dropped). `dtype` may be a torch
        dtype, its name, or "auto"; the head takes the backbone's dtype.
        """
        from transformers import AutoModel

        path = _resolve(name_or_path)
        backbone = AutoModel.from_pretrained(path, dtype=dtype)
        model = cls(backbone, score_dim, score_names, kind=kind, base_model=os.fspath(name_or_path))
        return model._prepare(lora, gradient_checkpointing)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike[str],
        dtype: torch.dtype | str = torch.float32,
        *,
        kind: str | None = None,
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
    ) -> ScoreModel:
        """Load a folder written by `save_pretrained`, head and normaliser included.

        `kind` relabels the model, e.g. a "critic" initialised from a "reward" model;
        `lora` puts fresh adapters on the loaded (merged) backbone.
        """
        from transformers import AutoModel

        folder = Path(folder)
        meta = json.loads((folder / SCORE_CONFIG_NAME).read_text())
        backbone = AutoModel.from_pretrained(folder, dtype=dtype)
        model = cls(backbone, meta["score_dim"], meta["score_names"], kind=kind or meta["kind"],
                    normalized=meta["normalized"], base_model=meta.get("base_model"))
        state = load_file(folder / SCORE_HEAD_NAME)
        model.head.load_state_dict({k.removeprefix("head."): state[k] for k in ("head.weight", "head.bias")})
        for key in _NORMALIZER_KEYS:
            getattr(model, key).copy_(state[key])
        return model._prepare(lora, gradient_checkpointing)

    def _prepare(self, lora: LoraSettings | None, gradient_checkpointing: bool) -> ScoreModel:
        if gradient_checkpointing:
            enable_gradient_checkpointing(self.backbone)
        if lora is not None:
            self.backbone = add_lora(self.backbone, lora)
        self.lora = lora
        return self

    def save_pretrained(
        self, folder: str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase | None = None
    ) -> None:
        """Write a Hugging Face folder that `from_pretrained` (and peft-free code) can load.

        LoRA adapters are merged into the saved backbone weights. Call it on one process only.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        backbone, state_dict = plain_backbone_state(self.backbone)
        backbone.save_pretrained(folder, state_dict=state_dict)
        head = {f"head.{k}": v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        head.update({k: getattr(self, k).detach().cpu() for k in _NORMALIZER_KEYS})
        save_file(head, folder / SCORE_HEAD_NAME, metadata={"format": "pt"})
        meta = {
            "kind": self.kind,
            "score_dim": self.score_dim,
            "score_names": self.score_names,
            "normalized": self.normalized,
            "base_model": self.base_model,
            "backbone_class": type(backbone).__name__,
            "lora_merged": asdict(self.lora) if self.lora else None,
            "safealign_version": safealign.__version__,
        }
        (folder / SCORE_CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)


def add_lora(backbone: PreTrainedModel, settings: LoraSettings) -> nn.Module:
    """`backbone` with LoRA adapters (peft); peft's default target modules for the architecture, else all linear layers."""
    from peft import LoraConfig, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    targets: list[str] | str | None = settings.target_modules
    if targets is None:
        targets = DEFAULTS.get(backbone.config.model_type, "all-linear")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing`; nothing for users to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(backbone, config)


@torch.no_grad()
def plain_backbone_state(backbone: nn.Module) -> tuple[PreTrainedModel, dict[str, torch.Tensor] | None]:
    """The transformers model to save and, under LoRA, its state dict with adapters merged.

    The merge goes into new tensors, not the live weights: merging in place and unmerging
    afterwards would leave rounding drift in a bf16 backbone that keeps training.
    """
    if not hasattr(backbone, "get_base_model"):
        return backbone, None
    from peft.tuners.lora import LoraLayer

    base = backbone.get_base_model()
    state: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if "lora_" not in key:
            state[key.replace(".base_layer.", ".")] = value
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight.detach().clone()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight += module.get_delta_weight(adapter).to(weight.dtype)
            state[f"{name}.weight"] = weight
    return base, state


def load_score_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """A tokenizer ready for score-model batches: a pad token and ``padding_side="right"``.

    The pad token is eos (or unk) when the tokenizer has none: padding is masked and never
    read, so reusing a token is harmless and keeps the embedding matrix unchanged. Only when
    neither exists is a new ``<pad>`` added; then call ``resize_token_embeddings``.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_resolve(name_or_path))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.padding_side = "right"
    return tokenizer


__all__ = ["SCORE_CONFIG_NAME", "SCORE_HEAD_NAME", "LoraSettings", "ScoreModel", "load_score_tokenizer"]
