"""Training: one loop (accelerate) shared by every algorithm, plus a small task per algorithm."""
