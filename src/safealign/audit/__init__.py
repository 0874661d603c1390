"""Audits of data before training: label credibility (`credibility`, `labels`, `run`)."""
