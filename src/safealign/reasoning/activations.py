"""The residual stream of a causal LM at one layer: a hook, per-token activations, a disk cache.

`ResidualHook` is a forward hook on decoder layer `layer` (0-based; negative counts from the
end). It records the layer's output hidden states (the residual stream after that layer) and
can add a steering vector to them (`safealign.reasoning.steering`). When only the activations
are wanted, it stops the forward pass right after the layer, so the layers above it cost
nothing. Both rely on how transformers runs a layer (its output is the hidden states, or a
tuple that starts with them), so `residual_stream` checks itself once per model class against
the public path (`output_hidden_states=True`, whose entry `layer + 1` is that layer's output)
and falls back to it, with one warning, if they ever differ.

`collect_activations` runs conversations (a prompt, and an answer when there is one) through
the model in batches, tokenised as generation sees them (the rendered prompt, then the
answer's tokens), and keeps every token's activation with its scope: 0 for the prompt's
tokens, 1 for the answer's. The first token of each conversation is left out: its hidden
state is the attention sink, with a norm one to two orders of magnitude above the others,
the same for every input. Results are cached on disk by a hash of the model, the layer and
the token ids.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from safealign.config import ConfigError
from safealign.models.selfcheck import verified
from safealign.models.template import encode_prompt

PROMPT, ANSWER = 0, 1
SCOPES = {"prompt": (PROMPT,), "answer": (ANSWER,), "conversation": (PROMPT, ANSWER)}


class ActivationError(ConfigError):
    """The model or the layer cannot be hooked as asked; the message says why."""


class _Stop(Exception):
    """Raised by the hook to end a forward pass once the layer's output is recorded."""


def decoder_layers(model: Any) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM (Llama/Mistral/Qwen/GPT-2/GPT-NeoX layouts)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner, name in ((base, "layers"), (getattr(model, "model", None), "layers"), (getattr(model, "transformer", None), "h"),
                        (getattr(model, "gpt_neox", None), "layers"), (model, "layers")):
        layers = getattr(owner, name, None) if owner is not None else None
        if isinstance(layers, nn.ModuleList) and len(layers):
            return layers
    raise ActivationError(f"{type(model).__name__}: no decoder layers found (looked for model.layers, transformer.h, gpt_neox.layers)")


def layer_index(model: Any, layer: int) -> int:
    """`layer` as a 0-based index into the decoder layers (negative counts from the end)."""
    n = len(decoder_layers(model))
    index = layer + n if layer < 0 else layer
    if not 0 <= index < n:
        raise ActivationError(f"layer {layer}: the model has {n} decoder layers (0 … {n - 1}, or −1 … −{n})")
    return index


class ResidualHook:
    """A forward hook on one decoder layer: records its output, optionally adds `delta(hidden)`, optionally stops there.

    Use as a context manager; `captured` holds the last output seen (size = (B, T, D)).
    """

    def __init__(self, model: Any, layer: int, record: bool = True, stop: bool = False, delta: Any = None) -> None:
        self.layer = layer_index(model, layer)
        self.module = decoder_layers(model)[self.layer]
        self.record, self.stop, self.delta = record, stop, delta
        self.captured: Tensor | None = None
        self._handle: Any = None

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if self.delta is not None:
            hidden = hidden + self.delta(hidden)
            output = (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        if self.record:
            self.captured = hidden.detach()
        if self.stop:
            raise _Stop
        return output if self.delta is not None else None

    def __enter__(self) -> ResidualHook:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()


def _hooked(model: Any, layer: int, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    with ResidualHook(model, layer, stop=True) as hook:
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Stop:
            pass
    if hook.captured is None:
        raise ActivationError(f"layer {layer} did not run")
    return hook.captured


def _public(model: Any, layer: int, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states[layer_index(model, layer) + 1]


@torch.no_grad()
def residual_stream(model: Any, layer: int, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Hidden states after decoder layer `layer`, size = (B, T, D): the hook, once checked against the public path."""
    index = layer_index(model, layer)

    def check() -> None:
        ids, mask = input_ids[:1, :8], attention_mask[:1, :8]
        probe = min(index, len(decoder_layers(model)) - 2)  # the public path's last entry is after the final norm
        expected, got = _public(model, probe, ids, mask), _hooked(model, probe, ids, mask)
        if expected.shape != got.shape or not torch.allclose(expected.float(), got.float(), atol=1e-4, rtol=1e-4):
            raise AssertionError(f"the hooked layer {probe} differs from hidden_states[{probe + 1}]")

    if len(decoder_layers(model)) > 1 and verified(("residual-hook", type(model).__name__), check,
                                                   "recording a decoder layer's output by a hook",
                                                   "activations come from output_hidden_states (slower)"):
        return _hooked(model, index, input_ids, attention_mask)
    return _public(model, index, input_ids, attention_mask)


@dataclass
class Activations:
    """Every recorded token's activation: values (N, D), scope (N,) 0 prompt / 1 answer, offsets (R + 1,) per conversation."""

    values: Tensor
    scope: Tensor
    offsets: Tensor
    layer: int
    model: str

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, i: int, scope: str = "conversation") -> Tensor:
        """The activations of conversation i in `scope` (prompt, answer or conversation), size = (n, D)."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        keep = torch.isin(self.scope[lo:hi], torch.tensor(SCOPES[scope], dtype=self.scope.dtype))
        return self.values[lo:hi][keep]

    def token_mask(self, scope: str) -> Tensor:
        """Which of the N tokens are in `scope`."""
        return torch.isin(self.scope, torch.tensor(SCOPES[scope], dtype=self.scope.dtype))

    def owners(self) -> Tensor:
        """The conversation index of each of the N tokens."""
        counts = self.offsets[1:] - self.offsets[:-1]
        return torch.repeat_interleave(torch.arange(len(self)), counts)


def encode_conversation(tokenizer: Any, dialogue: list[dict[str, str]], answer: str | None,
                        max_prompt_tokens: int = 256, max_answer_tokens: int = 128) -> tuple[list[int], int]:
    """(token ids, prompt length): the prompt as generation starts from it (its last tokens), then the answer's first tokens."""
    prompt = encode_prompt(tokenizer, dialogue)[-max_prompt_tokens:]
    reply = tokenizer(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens] if answer else []
    return prompt + reply, len(prompt)


def model_name(model: Any) -> str:
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def collect_activations(model: Any, tokenizer: Any, conversations: Sequence[tuple[list[dict[str, str]], str | None]],
                        layer: int, batch_size: int = 16, cache_dir: str | Path | None = None,
                        max_prompt_tokens: int = 256, max_answer_tokens: int = 128, progress: bool = True) -> Activations:
    """The activations at `layer` of each (dialogue, answer or None), in order; read from `cache_dir` when cached."""
    index = layer_index(model, layer)
    encoded = [encode_conversation(tokenizer, d, a, max_prompt_tokens, max_answer_tokens) for d, a in conversations]
    if not encoded:
        raise ActivationError("no conversations to record")
    name = model_name(model)
    path = _cache_path(cache_dir, model, index, encoded) if cache_dir else None
    if path is not None and path.exists():
        return _load(path, index, name)
    device = next(model.parameters()).device
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    per_row: list[tuple[Tensor, Tensor] | None] = [None] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for batch in _progress(batches, "activations", progress):
        width = max(len(encoded[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # right padding: positions stay 0 … n − 1
            tokens = encoded[i][0]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        hidden = residual_stream(model, index, ids.to(device), mask.to(device)).float().cpu()
        for row, i in enumerate(batch):
            tokens, prompt_length = encoded[i]
            scope = torch.full((len(tokens),), PROMPT, dtype=torch.int8)
            scope[prompt_length:] = ANSWER
            per_row[i] = (hidden[row, 1 : len(tokens)].clone(), scope[1:])  # the first token (the sink) left out
    values = torch.cat([v for v, _ in per_row])  # type: ignore[misc]
    scopes = torch.cat([s for _, s in per_row])  # type: ignore[misc]
    offsets = torch.tensor([0] + [len(s) for _, s in per_row]).cumsum(0)  # type: ignore[misc]
    found = Activations(values, scopes, offsets, index, name)
    if path is not None:
        _save(path, found)
    return found


def _progress(items: list[Any], what: str, enabled: bool) -> Any:
    if not enabled or not sys.stderr.isatty():
        return items
    from rich.progress import track

    return track(items, description=what, transient=True)


def _cache_path(cache_dir: str | Path, model: Any, layer: int, encoded: list[tuple[list[int], int]]) -> Path:
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update(json.dumps({"model": model_name(model), "layer": layer,
                              "config": config.to_json_string() if hasattr(config, "to_json_string") else "",
                              "parameters": sum(p.numel() for p in model.parameters()),
                              "first": float(next(model.parameters()).detach().flatten()[:64].double().sum())}).encode())
    for tokens, prompt_length in encoded:
        digest.update(json.dumps([prompt_length, tokens]).encode())
    return Path(cache_dir) / f"activations-{digest.hexdigest()[:24]}.safetensors"


def _save(path: Path, found: Activations) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"values": found.values.contiguous(), "scope": found.scope, "offsets": found.offsets},
              str(tmp), metadata={"model": found.model, "layer": str(found.layer)})
    tmp.replace(path)


def _load(path: Path, layer: int, name: str) -> Activations:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return Activations(tensors["values"].float(), tensors["scope"], tensors["offsets"], layer, name)
