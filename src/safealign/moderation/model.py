"""The moderation model: one set of heads (unsafe, harm categories, severity) on two backends.

- `embedding`: a frozen sentence encoder (all-MiniLM-L6-v2 offline, or any
  sentence-transformers / Hugging Face encoder folder; mean pooling, L2-normalised) and
  linear heads. Fast on a CPU.
- `finetune`: a score-model backbone (any Hugging Face model, LoRA optional) whose linear
  head has the same outputs, trained end to end.

Both judge the prompt and the response *together* (BeaverTails QA-moderation): the input is
the dialogue rendered with the response. Outputs, per record: the probability of unsafe,
a score per harm category of the chosen taxonomy (multi-label) and a distribution over
severity 0–3. `flagged` uses the decision threshold tuned on validation data and saved with
the model; categories are flagged at 0.5; severity is 0 when not flagged, else the most
likely level among 1–3.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from safealign.data.taxonomy import MAX_SEVERITY, get_taxonomy
from safealign.models.encoder import SentenceEncoder
from safealign.models.template import render

CONFIG_NAME = "moderation_config.json"
HEADS_NAME = "moderation_heads.safetensors"
SEVERITIES = MAX_SEVERITY + 1


@dataclass
class Verdict:
    """One moderation decision."""

    flagged: bool
    unsafe_probability: float
    categories: dict[str, bool]
    category_scores: dict[str, float]
    severity: int
    severity_distribution: list[float]


@dataclass
class ModerationMeta:
    """What a saved moderator needs besides weights."""

    backend: str  # embedding | finetune
    encoder: str  # the sentence encoder (embedding backend) or base model name
    taxonomy: str
    threshold: float = 0.5
    max_length: int = 256
    threshold_rule: str = "f1"  # how `threshold` was tuned (folders saved before the rules existed: best F1)
    judges: str = "response"  # response: (dialogue, answer) pairs; prompt: the user's request alone (an input guard)


def output_size(num_categories: int) -> int:
    """Logits per record: 1 unsafe + one per category + 4 severity levels."""
    return 1 + num_categories + SEVERITIES


def split_logits(logits: Tensor, num_categories: int) -> tuple[Tensor, Tensor, Tensor]:
    """(unsafe (B,), categories (B, C), severity (B, 4)) from the heads' (B, 1 + C + 4) output."""
    return logits[:, 0], logits[:, 1 : 1 + num_categories], logits[:, 1 + num_categories :]


def moderation_text(dialogue: list[dict[str, str]], response: str) -> str:
    """The text an embedding moderator reads: the rendered dialogue with the response."""
    return render(None, [*dialogue, {"role": "assistant", "content": response}])


class Moderator:
    """Judge (dialogue, response) pairs; load with `Moderator.load(folder)`."""

    def __init__(self, meta: ModerationMeta, heads: nn.Module, encoder: Any, tokenizer: Any = None) -> None:
        self.meta = meta
        self.taxonomy = get_taxonomy(meta.taxonomy)
        self.heads = heads  # embedding: nn.Linear(H, out); finetune: the ScoreModel
        self.encoder = encoder  # embedding: SentenceEncoder; finetune: None
        self.tokenizer = tokenizer  # finetune: the score model's tokenizer

    def to(self, device: torch.device | str) -> Moderator:
        """Move the heads and the encoder (inputs follow the parameters' device)."""
        self.heads.to(device)
        if self.encoder is not None:
            self.encoder.to(device)
        return self

    @torch.no_grad()
    def logits(self, dialogues: list[list[dict[str, str]]], responses: list[str], batch_size: int = 32) -> Tensor:
        """Raw head outputs, size = (N, 1 + C + 4)."""
        if self.meta.backend == "embedding":
            features = self.encoder([moderation_text(d, r) for d, r in zip(dialogues, responses)], batch_size)
            weight = next(self.heads.parameters())
            return self.heads(features.to(weight.device, weight.dtype)).float()
        from safealign.models.template import encode_dialogue
        from safealign.inference.batching import pad

        self.heads.eval()
        device = next(self.heads.parameters()).device
        rows = []
        for start in range(0, len(responses), batch_size):
            seqs = [encode_dialogue(self.tokenizer, d, r, self.meta.max_length)
                    for d, r in zip(dialogues[start : start + batch_size], responses[start : start + batch_size])]
            ids, mask = pad(seqs, self.tokenizer.pad_token_id)
            rows.append(self.heads(ids.to(device), mask.to(device)).float())
        return torch.cat(rows)

    def to_bfloat16(self) -> Moderator:
        """Cast the network's weights (not its buffers) to bfloat16, in place, for inference.

        On CPUs with AMX/AVX512-BF16 the MiniLM encoder judges ~1.25x more inputs/s than under
        bf16 autocast, which re-casts every weight on every call; embeddings move by ~1e-4.
        The small embedding-backend heads stay float32.
        """
        network = self.encoder.model if self.meta.backend == "embedding" else self.heads
        for parameter in network.parameters():
            parameter.data = parameter.data.to(torch.bfloat16)
        return self

    def predict(self, dialogues: list[list[dict[str, str]]], responses: list[str], batch_size: int = 32) -> list[Verdict]:
        """One verdict per (dialogue, response)."""
        if not responses:
            return []
        return decode(self.logits(dialogues, responses, batch_size), self.taxonomy.categories, self.meta.threshold)

    def predict_prompts(self, dialogues: list[list[dict[str, str]]], batch_size: int = 32) -> list[Verdict]:
        """One verdict per request (a prompt moderator reads the dialogue with an empty answer, as it was trained)."""
        return self.predict(dialogues, [""] * len(dialogues), batch_size)

    def save(self, folder: str | Path) -> Path:
        """Write the folder: moderation_config.json, heads (embedding) or score-model files (finetune)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.meta.backend == "embedding":
            save_file({k: v.contiguous().cpu() for k, v in self.heads.state_dict().items()}, folder / HEADS_NAME)
        else:
            self.heads.save_pretrained(folder, self.tokenizer)
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.meta), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Moderator:
        """A moderator saved by `save`."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(2, f"not a safealign moderation folder (no {CONFIG_NAME})", str(folder))
        meta = ModerationMeta(**json.loads((folder / CONFIG_NAME).read_text()))
        size = output_size(len(get_taxonomy(meta.taxonomy)))
        if meta.backend == "embedding":
            encoder = SentenceEncoder(meta.encoder, meta.max_length)
            heads = nn.Linear(encoder.dim, size)
            heads.load_state_dict(load_file(folder / HEADS_NAME))
            return cls(meta, heads.eval(), encoder)
        from safealign.models.score import ScoreModel, load_score_tokenizer

        return cls(meta, ScoreModel.from_pretrained(folder).eval(), None, load_score_tokenizer(folder))


def decode(logits: Tensor, categories: tuple[str, ...], threshold: float) -> list[Verdict]:
    """Verdicts from head outputs: probabilities, flags and a severity consistent with the flag."""
    unsafe, cats, sev = split_logits(logits, len(categories))
    p_unsafe = torch.sigmoid(unsafe).tolist()
    p_cats = torch.sigmoid(cats).tolist()
    p_sev = torch.softmax(sev, dim=-1).tolist()
    verdicts = []
    for p, pc, ps in zip(p_unsafe, p_cats, p_sev):
        flagged = p >= threshold
        level = 0 if not flagged else 1 + max(range(MAX_SEVERITY), key=lambda i: ps[i + 1])
        verdicts.append(Verdict(
            flagged=flagged,
            unsafe_probability=p,
            categories={c: s >= 0.5 for c, s in zip(categories, pc)},
            category_scores=dict(zip(categories, pc)),
            severity=level,
            severity_distribution=ps,
        ))
    return verdicts
