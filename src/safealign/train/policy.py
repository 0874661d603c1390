"""What SFT and the DPO family share: the policy model, response-only labels, sequence log-probs.

A training example is a (dialogue, response) pair tokenised as the policy will later see it
at generation time: the prompt rendered with the chat template's generation prompt, then
the response and an end-of-sequence token. Labels are the input ids with the prompt
masked (-100), so losses and log-probabilities count response tokens only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from safealign.data.derive import PreferenceBasis
from safealign.data.records import DualPreferencePair
from safealign.models.loading import load_causal_lm
from safealign.models.score import LoraSettings, add_lora, load_score_tokenizer, plain_backbone_state
from safealign.models.template import render, render_prompt
from safealign.train.batching import pad

IGNORE = -100  # label of a token that no loss reads (prompt and padding)


def chosen_response_id(pair: DualPreferencePair, basis: PreferenceBasis) -> int | None:
    """The preferred response of a dual pair: the better, the safer, or both when they agree (else None)."""
    if basis == "harmlessness":
        return pair.safer_response_id
    if basis == "both" and pair.better_response_id != pair.safer_response_id:
        return None
    return pair.better_response_id


# --- model ---------------------------------------------------------------------------------


def load_policy(
    name_or_path: str, *, dtype: str = "float32", lora: LoraSettings | None = None, gradient_checkpointing: bool = False
) -> tuple[nn.Module, Any]:
    """(policy, tokenizer): the causal LM with optional gradient checkpointing and LoRA adapters.

    The tokenizer pads on the right with a pad token (eos when it has none; see
    `load_score_tokenizer`); labels, not the pad id, decide which tokens count.
    """
    tokenizer = load_score_tokenizer(name_or_path)
    model = load_causal_lm(name_or_path, dtype=dtype)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # a new <pad> was added
    if gradient_checkpointing:
        # use_reentrant=False also lets gradients reach LoRA adapters under a frozen base.
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable()
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        model = add_lora(model, lora)
    return model, tokenizer


def save_policy(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """Write a plain Hugging Face folder (LoRA merged into copies of the weights) with the tokenizer.

    It loads with ``AutoModelForCausalLM.from_pretrained(folder)``, no peft needed, and the
    live model keeps training unchanged (nothing is merged in place).
    """
    base, state_dict = plain_backbone_state(model)
    base.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)


# --- tokens --------------------------------------------------------------------------------


def encode_response(tokenizer: Any, dialogue: list[dict[str, str]], response: str, max_length: int) -> dict[str, list[int]]:
    """Token ids of dialogue + response and labels that are -100 on the prompt tokens.

    The full conversation is tokenised once and the prompt's tokens must be its prefix; when
    a token straddles the boundary (the prefix check fails), the prompt and the rest are
    tokenised apart, which is also how generation will see them. The response ends with one
    eos (whatever a chat template puts after its end-of-turn token is dropped).
    Longer than `max_length`: the prompt loses its start first, keeping at least half the
    budget when the response is long; then the response loses its end.
    """
    special = not getattr(tokenizer, "chat_template", None)  # templates write their own bos
    prompt = render_prompt(tokenizer, dialogue)
    full = render(tokenizer, [*dialogue, {"role": "assistant", "content": response}])
    prompt_ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=special)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        response_ids = full_ids[len(prompt_ids) :]
    else:
        rest = full[len(prompt) :] if full.startswith(prompt) else response
        response_ids = tokenizer(rest, add_special_tokens=False)["input_ids"]
    response_ids = _end_with_eos(response_ids, tokenizer.eos_token_id)
    if len(prompt_ids) + len(response_ids) > max_length:
        keep = min(len(prompt_ids), max(max_length - len(response_ids), max_length // 2))
        prompt_ids = prompt_ids[len(prompt_ids) - keep :]
        response_ids = response_ids[: max_length - keep]
    return {"input_ids": prompt_ids + response_ids, "labels": [IGNORE] * len(prompt_ids) + response_ids}


def _end_with_eos(ids: list[int], eos: int | None) -> list[int]:
    if eos is None:
        return ids
    if eos in ids:
        return ids[: len(ids) - ids[::-1].index(eos)]
    return [*ids, eos]


def collate_sequences(encoded: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded input_ids, attention_mask and labels (-100 on padding), size = (N, L)."""
    input_ids, attention_mask = pad([e["input_ids"] for e in encoded], pad_id)
    labels, _ = pad([e["labels"] for e in encoded], IGNORE)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "num_tokens": int(attention_mask.sum())}


def sequence_logprobs(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Sum of response-token log-probs and the number of response tokens, each size = (N,).

    log π(y | x) = Σ_t 1[label_t ≠ -100] · log π(y_t | x, y_<t), one forward pass for the batch.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    targets = batch["labels"][:, 1:]  # token t is predicted at position t - 1; size = (N, L - 1)
    mask = targets != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # size = (N, L - 1, V)
    picked = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # size = (N, L - 1)
    return (picked * mask).sum(-1), mask.sum(-1)
