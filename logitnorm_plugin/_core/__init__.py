"""Torch-free helpers shared across floors."""
