"""Noise OOD sets whose image ``i`` is a pure function of ``(kind, seed, i)``.

pytorch-ood's ``GaussianNoise`` / ``UniformNoise`` draw from one stateful generator on every
access, so ``ds[0] != ds[0]``, a second pass differs and DataLoader workers duplicate
batches. Here each image gets its own generator seeded by a hash of ``(kind, seed, index)``:
the same index gives the same image in any order, pass, process or worker.

Distributions (pixels in ``[0, 1]`` before quantisation to uint8):

- ``"gaussian"``: ``clip(N(0.5, 0.25^2), 0, 1)`` i.i.d. per pixel and channel, i.e. the
  ``clip(N(0, 0.5^2), -1, 1)`` noise of the Outlier Exposure / LogitNorm code mapped from
  ``[-1, 1]`` to ``[0, 1]``;
- ``"uniform"``: ``U(0, 1)`` i.i.d. per pixel and channel (``U(-1, 1)`` there).

``levels`` quantises to that many equally spaced grey levels (256: plain uint8; 17: the grey
levels of the scikit-learn digits), so noise has the same value set as the ID images.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from logitnorm_plugin._core.rng import hash64
from logitnorm_plugin.data.tensors import ImageTensors

__all__ = ["NOISE_KINDS", "NoiseDataset", "noise_image", "noise_images", "quantize"]

NOISE_KINDS = ("gaussian", "uniform")
_KIND_CODES = {"gaussian": 1, "uniform": 2}


def _index_seed(kind: str, seed: int, index: int) -> int:
    """A 63-bit generator seed from ``(kind, seed, index)``; distinct inputs do not collide
    in practice (each step is a bijective 64-bit mix)."""
    return hash64(0, _KIND_CODES[kind], seed, index) >> 1


def quantize(x01: Tensor, levels: int = 256) -> Tensor:
    """Pixels in ``[0, 1]`` -> uint8 on ``levels`` equally spaced grey levels of ``0..255``."""
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256, got {levels}")
    q = torch.round(x01.clamp(0, 1) * (levels - 1))
    return torch.round(q * (255.0 / (levels - 1))).to(torch.uint8)


def noise_image(
    kind: str, seed: int, index: int, shape: Sequence[int], levels: int = 256
) -> Tensor:
    """Image ``index`` of the noise set ``(kind, seed)``: a ``C x H x W`` uint8 tensor.

    :param kind: ``"gaussian"`` or ``"uniform"``
    :param seed: the set's seed
    :param index: the image index (any non-negative integer)
    :param shape: ``(C, H, W)``
    :param levels: number of grey levels, see :func:`quantize`
    """
    if kind not in _KIND_CODES:
        raise ValueError(f"unknown noise kind {kind!r}, expected one of {NOISE_KINDS}")
    g = torch.Generator().manual_seed(_index_seed(kind, seed, index))
    shape = tuple(int(s) for s in shape)
    if kind == "gaussian":
        x = torch.randn(shape, generator=g).mul_(0.25).add_(0.5)
    else:
        x = torch.rand(shape, generator=g)
    return quantize(x, levels)


def noise_images(
    kind: str, seed: int, n: int, shape: Sequence[int], levels: int = 256, start: int = 0
) -> Tensor:
    """Images ``start .. start+n-1`` of the noise set ``(kind, seed)``: ``n x C x H x W`` uint8."""
    out = torch.empty((n, *shape), dtype=torch.uint8)
    for i in range(n):
        out[i] = noise_image(kind, seed, start + i, shape, levels)
    return out


class NoiseDataset(Dataset):
    """A lazy noise OOD set: item ``i`` is generated from ``(kind, seed, i)`` on access.

    Use it where images must not be held in memory; :meth:`materialize` gives the identical
    images as an :class:`ImageTensors`. Labels are ``-1``.

    :param kind: ``"gaussian"`` or ``"uniform"``
    :param n: number of images
    :param shape: ``(C, H, W)``
    :param seed: the set's seed
    :param mean: normalisation mean (pixels in ``[0, 1]``)
    :param std: normalisation std
    :param levels: grey levels, see :func:`quantize`
    :param name: the set's name (default: ``kind``)
    """

    def __init__(
        self,
        kind: str,
        n: int,
        shape: Tuple[int, int, int],
        seed: int = 0,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        levels: int = 256,
        name: str = "",
    ):
        if kind not in _KIND_CODES:
            raise ValueError(f"unknown noise kind {kind!r}, expected one of {NOISE_KINDS}")
        self.kind, self.n, self.shape = kind, int(n), tuple(int(s) for s in shape)
        self.seed, self.levels = int(seed), int(levels)
        self.name = name or kind
        # an empty set reused only for its normalisation
        self._norm = ImageTensors(
            torch.empty((0, *self.shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64),
            mean, std, self.name,
        )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        if not -self.n <= index < self.n:
            raise IndexError(index)
        index = index % self.n
        img = noise_image(self.kind, self.seed, index, self.shape, self.levels)
        return self._norm.normalize(img), -1

    def materialize(self) -> ImageTensors:
        """All images at once as an :class:`ImageTensors` (labels ``-1``)."""
        images = noise_images(self.kind, self.seed, self.n, self.shape, self.levels)
        labels = torch.full((self.n,), -1, dtype=torch.int64)
        return ImageTensors(images, labels, self._norm.mean, self._norm.std, self.name)
