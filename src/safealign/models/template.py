"""How a dialogue and a response become the token ids a score model reads.

The tokenizer's chat template is used when it has one (SmolLM2, most instruct models);
otherwise a plain `USER: ... ASSISTANT: ...` layout. Training and every later scoring
call go through `encode_dialogue`, so a model is always read the way it was trained.
"""

from __future__ import annotations

from typing import Any

PLAIN_ROLES = {"system": "SYSTEM", "user": "USER", "assistant": "ASSISTANT"}


def render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation as text, ending with the final (assistant) message."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(f"{PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages)


def encode_dialogue(tokenizer: Any, dialogue: list[dict[str, str]], response: str, max_length: int) -> list[int]:
    """Token ids of `dialogue` + the assistant `response`, keeping the last `max_length` tokens.

    Truncation drops the *start*: the score is read at the last token, and the response
    end is what a score model must see.
    """
    text = render(tokenizer, [*dialogue, {"role": "assistant", "content": response}])
    ids = tokenizer(text, add_special_tokens=adds_special_tokens(tokenizer))["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)  # a fixed final token to read the score at
    return ids[-max_length:]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation up to the point where the assistant starts answering (for generation)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(f"{PLAIN_ROLES[m['role']]}: {m['content']}" for m in messages) + f"\n{PLAIN_ROLES['assistant']}:"


def adds_special_tokens(tokenizer: Any) -> bool:
    """Whether the tokenizer adds its own special tokens (a bos): only without a chat template, which writes them."""
    return not getattr(tokenizer, "chat_template", None)


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `render_prompt`: the prompt as generation starts from it and as SFT and DPO train on it.

    One function for both, so a tokenizer without a chat template gets its bos in
    training and in generation alike.
    """
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=adds_special_tokens(tokenizer))["input_ids"]
