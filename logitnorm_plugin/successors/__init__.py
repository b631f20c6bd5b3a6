"""Successors of LogitNorm as training objectives: ELogitNorm and T2FNorm."""
