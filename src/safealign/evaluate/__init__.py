"""Evaluation of score models and policies."""
