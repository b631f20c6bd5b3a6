"""Torch-free helpers every layer shares: conventions, errors, atomic files, locks, hashing,
provenance, the device rule, random state and table text."""
