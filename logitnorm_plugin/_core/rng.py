"""Random-number state of a process as plain types and tensors.

A checkpoint stores it so that ``--resume`` continues with the same shuffling, augmentation
and dropout streams; plain types and tensors are what ``torch.load(..., weights_only=True)``
reads back.
"""

from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["get_rng_state", "hash64", "set_rng_state", "splitmix64"]

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """One step of the SplitMix64 generator's output function: a bijective 64-bit mix."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def hash64(start: int, *values: int) -> int:
    """``values`` folded into ``start`` with :func:`splitmix64` (64 bits): the seed of one item
    of a seeded, index-addressable stream (noise images, outlier permutations, jigsaw
    digits), the same on every machine and independent of what else was drawn."""
    h = start
    for v in values:
        h = splitmix64(h ^ (int(v) & _MASK64))
    return h



def get_rng_state(device: torch.device, augment) -> Dict[str, Any]:
    """The state of torch, numpy, random, the augmentation generator and CUDA on ``device``."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "random": [int(py_state[0]), [int(v) for v in py_state[1]], py_state[2]],
        "augment": augment.get_state() if augment is not None else None,
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device, augment) -> None:
    """Restore a state of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if augment is not None and state.get("augment") is not None:
        augment.set_state(state["augment"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
