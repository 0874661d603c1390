"""Severity-sensitive moderation: is a (prompt, response) safe, which harm categories, how severe."""
