"""Bench plans, executors and what they gather."""
