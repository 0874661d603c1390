"""What SFT and the DPO family share: the policy model, response-only labels, sequence log-probs.

A training example is a (dialogue, response) pair tokenised as the policy will later see it
at generation time: the prompt rendered with the chat template's generation prompt, then
the response and an end-of-sequence token. Labels are the input ids with the prompt
masked (-100), so losses and log-probabilities count response tokens only.
"""

from __future__ import annotations

import inspect
import weakref
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import Tensor, nn

from safealign.data.derive import PreferenceBasis
from safealign.data.records import DualPreferencePair
from safealign.models.loading import enable_gradient_checkpointing, load_causal_lm
from safealign.models.packing import PackingRule, can_pack, mask_for, pack_pairs, right_padded
from safealign.models.score import LoraSettings, add_lora, load_score_tokenizer, plain_backbone_state
from safealign.models.template import adds_special_tokens, encode_prompt, render, render_prompt
from safealign.inference.batching import pad

IGNORE = -100  # label of a token that no loss reads (prompt and padding)


def chosen_response_id(pair: DualPreferencePair, basis: PreferenceBasis) -> int | None:
    """The preferred response of a dual pair: the better, the safer, or both when they agree.

    None when there is none: `both` and the two disagree, or a helpfulness basis on a pair with no
    helpfulness order (`better_response_id` None); callers skip such pairs and count them.
    """
    if basis == "harmlessness":
        return pair.safer_response_id
    if pair.better_response_id is None or (basis == "both" and pair.better_response_id != pair.safer_response_id):
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
        enable_gradient_checkpointing(model)
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
    prompt = render_prompt(tokenizer, dialogue)
    full = render(tokenizer, [*dialogue, {"role": "assistant", "content": response}])
    prompt_ids = encode_prompt(tokenizer, dialogue)  # as generation sees it
    full_ids = tokenizer(full, add_special_tokens=adds_special_tokens(tokenizer))["input_ids"]
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


def collate_packed_pairs(pairs: list[tuple[dict[str, list[int]], dict[str, list[int]]]], pad_id: int) -> dict[str, Any]:
    """Labelled pairs packed one per row (`safealign.models.packing`), for `sequence_logprobs`.

    Sequences are numbered [first_0..first_B, second_0..second_B] as in `collate_sequences`.
    Each response token t of sequence s is read from the logits at the packed place of token
    t - 1: `label_row`/`label_col` (the column as an index into `logits_keep`, the columns
    whose logits are computed at all), `label_target`, `label_owner` = s; all size = (T,).
    """
    rows = pack_pairs([(a["input_ids"], b["input_ids"]) for a, b in pairs], pad_id)
    sequences = [a for a, _ in pairs] + [b for _, b in pairs]
    owner, columns, targets = [], [], []
    for s, encoded in enumerate(sequences):
        labels = torch.tensor(encoded["labels"], dtype=torch.long)
        t = (labels[1:] != IGNORE).nonzero().squeeze(1) + 1  # response tokens; size = (T_s,)
        owner.append(torch.full_like(t, s))
        columns.append(rows["index"][s, t - 1])
        targets.append(labels[t])
    columns_all = torch.cat(columns)
    keep = torch.unique(columns_all)  # sorted columns whose logits are needed
    return {
        "input_ids": rows["input_ids"],
        "attention_mask": rows["attention_mask"],
        "position_ids": rows["position_ids"],
        "logits_keep": keep,
        "label_row": rows["rows"][torch.cat(owner)],
        "label_col": torch.searchsorted(keep, columns_all),
        "label_target": torch.cat(targets),
        "label_owner": torch.cat(owner),
        "num_sequences": len(sequences),
        "num_tokens": sum(len(e["input_ids"]) for e in sequences),
    }


def policy_packing_rule(model: nn.Module) -> PackingRule | None:
    """When to pack pairs for this policy (`collate_packed_pairs`); None when it cannot be.

    Needs a causal model that takes 4D masks and `logits_to_keep`. The rule counts the output
    head too: the padded layout computes logits at every position, the packed one at
    response positions only.
    """
    base = _base_model(model)
    if not (_causal(base) and "logits_to_keep" in inspect.signature(base.forward).parameters):
        return None
    return PackingRule.for_config(base.config, output_size=base.config.vocab_size)


def sequence_logprobs(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Sum of response-token log-probs and the number of response tokens, each size = (N,).

    log π(y | x) = Σ_t 1[label_t ≠ -100] · log π(y_t | x, y_<t), one forward pass for the batch.
    A packed batch (`collate_packed_pairs`) computes logits at the predicting places only.
    """
    if "label_target" in batch:
        return _packed_logprobs(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=_mask_if_needed(model, batch["attention_mask"]), use_cache=False).logits
    targets = batch["labels"][:, 1:]  # token t is predicted at position t - 1; size = (N, L - 1)
    mask = targets != IGNORE
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # size = (N, L - 1, V)
    picked = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # size = (N, L - 1)
    return (picked * mask).sum(-1), mask.sum(-1)


def _mask_if_needed(model: nn.Module, attention_mask: Tensor) -> Tensor | None:
    """None for right padding in a causal model: its real tokens never see the padding after them."""
    return None if _causal(_base_model(model)) and right_padded(attention_mask) else attention_mask


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP/FSDP and peft wrappers."""
    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


_CAUSAL: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _causal(base: nn.Module) -> bool:
    """`can_pack(base)`, worked out once per model (it walks every module)."""
    if base not in _CAUSAL:
        _CAUSAL[base] = can_pack(base)
    return _CAUSAL[base]


def _packed_logprobs(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    base = _base_model(model)
    mask = mask_for(batch["attention_mask"], base, next(base.parameters()).dtype)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
        use_cache=False, logits_to_keep=batch["logits_keep"],
    ).logits  # size = (B, K, V)
    logits = logits[batch["label_row"], batch["label_col"]].float()  # size = (T, V)
    targets = batch["label_target"]
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # size = (T,)
    owner, n = batch["label_owner"], batch["num_sequences"]
    sums = torch.zeros(n, dtype=picked.dtype, device=picked.device).index_add(0, owner, picked)
    return sums, torch.bincount(owner, minlength=n)
