"""ActivationReasoning: concepts in a model's activations (top-k SAE + dictionary), logic over them, steering by rules."""
