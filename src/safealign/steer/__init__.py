"""Steerable policies: SteerLM attribute labels and Janus-style system-message preferences."""
