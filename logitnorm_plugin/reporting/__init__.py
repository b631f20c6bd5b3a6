"""Upstream export formats: OpenOOD leaderboard rows, Hugging Face cards, pytorch-ood patches."""
