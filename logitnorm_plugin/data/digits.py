"""The embedded default benchmark: scikit-learn's digits (no download) and four OOD sets.

ID data
    ``sklearn.datasets.load_digits``: 1,797 grey 8 x 8 images of the digits 0-9, pixels
    ``0..16`` (counts of ink in 4 x 4 blocks of 32 x 32 bitmaps), stored as uint8 ``1 x 8 x 8``
    with ``p * 255 / 16`` rounded, i.e. the 17 grey levels ``0, 16, 32, ..., 255``.

Split (stratified by class, fixed)
    ``test``: 30% (540 images), drawn with ``random_state=0``, the same for every seed so that
    results of different training seeds are comparable. ``train_full``: the other 70%
    (1,257). ``val``: 180 images (10% of all digits) held out from ``train_full`` with
    ``random_state=seed``; ``train``: the remaining 1,077. Indices are sorted.

Normalisation
    Mean and std of the pixels (in ``[0, 1]``) of ``train_full``, which is the same for every
    seed; the constants below are checked against a recomputation in the tests.

OOD sets (all ``1 x 8 x 8`` uint8 on the same 17 grey levels as the digits, so no detector can
tell them apart by quantisation alone)
    - ``"patches"``: natural-image patches from scikit-learn's bundled ``china.jpg`` and
      ``flower.jpg``: grey (ITU-R 601 luma), a 32 x 32 window at a seeded position in a seeded
      choice of the two images, reduced to 8 x 8 by 4 x 4 block means, the way the digits
      themselves were made from 32 x 32 bitmaps; structureless windows (clear sky) redrawn.
    - ``"gaussian"``, ``"uniform"``: noise, a pure function of (seed, index), see
      :mod:`~logitnorm_plugin.data.noise`.
    - ``"rotated"``: near-OOD, see :func:`rotated_digits`.
    Each has 540 images by default, the size of the ID test set (``rotated``: 486, the test
    digits other than 0).
"""

from __future__ import annotations

import functools
from typing import Sequence, Tuple

import numpy as np
import torch

from logitnorm_plugin.data.noise import NoiseDataset, quantize
from logitnorm_plugin.data.tensors import ImageTensors

__all__ = [
    "DIGITS_LEVELS",
    "DIGITS_MEAN",
    "DIGITS_OOD",
    "DIGITS_SPLIT_SEED",
    "DIGITS_STD",
    "DIGITS_TEST_FRACTION",
    "DIGITS_VAL_FRACTION",
    "digits_arrays",
    "digits_ood",
    "digits_split_indices",
    "load_digits_split",
    "natural_patches",
    "rotated_digits",
]

DIGITS_TEST_FRACTION = 0.3
DIGITS_VAL_FRACTION = 0.1  # of all digits, taken from train_full
DIGITS_SPLIT_SEED = 0  # the test split never depends on the caller's seed
DIGITS_LEVELS = 17
# pixel statistics of train_full in [0, 1]; tests recompute them
DIGITS_MEAN = (0.30560,)
DIGITS_STD = (0.37596,)
DIGITS_CLASSES = [str(i) for i in range(10)]
DIGITS_OOD = ("patches", "gaussian", "uniform", "rotated")
_SPLITS = ("train", "val", "train_full", "test")


@functools.lru_cache(maxsize=1)
def digits_arrays() -> Tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: ``(N x 1 x 8 x 8 uint8 images, N int64 labels)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    images = torch.from_numpy(images)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    images.requires_grad_(False)
    return images, labels


@functools.lru_cache(maxsize=16)
def _split_indices(split: str, seed: int) -> Tuple[int, ...]:
    from sklearn.model_selection import train_test_split

    _, labels = digits_arrays()
    y = labels.numpy()
    everything = np.arange(len(y))
    train_full, test = train_test_split(
        everything, test_size=DIGITS_TEST_FRACTION, stratify=y,
        random_state=DIGITS_SPLIT_SEED,
    )
    if split == "test":
        return tuple(sorted(test.tolist()))
    if split == "train_full":
        return tuple(sorted(train_full.tolist()))
    n_val = int(round(DIGITS_VAL_FRACTION * len(y)))
    train, val = train_test_split(
        train_full, test_size=n_val, stratify=y[train_full], random_state=int(seed)
    )
    return tuple(sorted((train if split == "train" else val).tolist()))


def digits_split_indices(split: str, seed: int = 0) -> np.ndarray:
    """Indices into :func:`digits_arrays` of one split (sorted).

    :param split: ``"train"``, ``"val"``, ``"train_full"`` or ``"test"``
    :param seed: chooses the ``val`` hold-out (and so ``train``); ``test`` / ``train_full``
        are fixed
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {_SPLITS}")
    return np.asarray(_split_indices(split, int(seed)), dtype=np.int64)


def load_digits_split(
    split: str,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageTensors:
    """One split of the digits as :class:`ImageTensors` (see the module doc for the split)."""
    images, labels = digits_arrays()
    idx = torch.from_numpy(digits_split_indices(split, seed))
    return ImageTensors(
        images[idx].clone(), labels[idx].clone(), mean or DIGITS_MEAN, std or DIGITS_STD,
        name="digits", classes=DIGITS_CLASSES,
    )


def _default_n() -> int:
    return len(digits_split_indices("test"))


@functools.lru_cache(maxsize=1)
def _grey_sample_images() -> Tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    greys = []
    for img in load_sample_images().images:  # china.jpg, flower.jpg: 427 x 640 x 3 uint8
        rgb = img.astype(np.float64)
        greys.append(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)
    return tuple(greys)


def natural_patches(
    n: int | None = None,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    window: int = 32,
    min_std: float = 8.0,
) -> ImageTensors:
    """``"patches"``: grey natural-image patches reduced to 8 x 8 (labels ``-1``).

    :param n: number of patches (default: the ID test size, 540)
    :param seed: chooses image and position of every patch (``numpy.random.default_rng``)
    :param window: side of the cut window; reduced by ``window // 8`` block means
    :param min_std: windows whose 8 x 8 reduction has a pixel std below this (on the 0..255
        scale; half a digits grey level) are redrawn, so no patch is a flat grey
    """
    n = _default_n() if n is None else int(n)
    if window % 8:
        raise ValueError("window must be a multiple of 8")
    greys = _grey_sample_images()
    rng = np.random.default_rng([int(seed), 8008])
    which = rng.integers(0, len(greys), size=n)
    out = np.empty((n, 1, 8, 8), dtype=np.float64)
    k = window // 8
    for i, w in enumerate(which):
        g = greys[w]
        while True:  # redraw structureless windows (clear sky): a flat grey is no image
            y = rng.integers(0, g.shape[0] - window + 1)
            x = rng.integers(0, g.shape[1] - window + 1)
            small = g[y : y + window, x : x + window].reshape(8, k, 8, k).mean(axis=(1, 3))
            if small.std() >= min_std:
                break
        out[i, 0] = small
    images = quantize(torch.from_numpy(out / 255.0), DIGITS_LEVELS)
    labels = torch.full((n,), -1, dtype=torch.int64)
    return ImageTensors(images, labels, mean or DIGITS_MEAN, std or DIGITS_STD, "patches")


def rotated_digits(
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    n: int | None = None,
) -> ImageTensors:
    """``"rotated"``: test digits rotated by +-90 degrees, zeros excluded (near-OOD).

    Why this is near-OOD: the images keep everything the classifier could use as a shortcut
    (the pen, the stroke width, the 17 grey levels, the ink per image, the centring in the
    box), only the shape is no digit any more: a semantic shift without covariate shift,
    the harder end of OOD detection. Zeros are left out because a rotated 0 is still an
    oval, i.e. still a valid 0 (the self-symmetric ambiguity); no other digit becomes a digit
    under a quarter turn in this 8 x 8 rendering (6 and 9 map to each other only under a half
    turn, which is not used). Using the ID *test* images keeps the training images unseen.
    The direction (clockwise or not) of each image is drawn from ``seed``.

    :param n: keep only the first ``n`` images (default: all 486)
    """
    images, labels = digits_arrays()
    idx = torch.from_numpy(digits_split_indices("test"))
    idx = idx[labels[idx] != 0]
    if n is not None:
        idx = idx[: int(n)]
    src = images[idx]
    rng = np.random.default_rng([int(seed), 9090])
    turns = rng.choice([1, 3], size=len(idx))
    out = torch.stack([torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(src, turns)])
    ood_labels = torch.full((len(idx),), -1, dtype=torch.int64)
    return ImageTensors(out, ood_labels, mean or DIGITS_MEAN, std or DIGITS_STD, "rotated")


def digits_ood(
    name: str,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    n: int | None = None,
) -> ImageTensors:
    """One of the digits OOD sets (:data:`DIGITS_OOD`) as :class:`ImageTensors`, labels ``-1``."""
    mean, std = mean or DIGITS_MEAN, std or DIGITS_STD
    if name == "patches":
        return natural_patches(n, seed, mean, std)
    if name in ("gaussian", "uniform"):
        n = _default_n() if n is None else int(n)
        return NoiseDataset(name, n, (1, 8, 8), seed, mean, std, DIGITS_LEVELS).materialize()
    if name == "rotated":
        return rotated_digits(seed, mean, std, n)
    raise ValueError(f"unknown digits OOD set {name!r}, expected one of {DIGITS_OOD}")
