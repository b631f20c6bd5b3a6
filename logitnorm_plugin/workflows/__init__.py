"""Bench plans, executors (inline, local pool, Slurm through submitit), shards and gather."""
