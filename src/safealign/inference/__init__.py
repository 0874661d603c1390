"""Inference: what training, the guard, evaluation and moderation all need to run a model.

A leaf of the package graph: it imports `data` and `models` only, and everything above
(`train`, `evaluate`, `moderation`, the CLI) imports it.

- `batching`: right-padding token lists (`pad`).
- `sampling`: `SamplingSettings` (one set of defaults for every command that samples),
  prompt encoding, batched sampling with `generate`, per-token log-probs.
- `scoring`: scoring text with a reward or cost model (`score_texts`, `ModelScorer`).
- `generate`: answers for a list of records (`generate_answers`, `load_generator`).
"""
