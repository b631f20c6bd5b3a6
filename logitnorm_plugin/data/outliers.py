"""Auxiliary outlier sets for training (Outlier Exposure, energy fine-tuning), never for testing.

Three kinds of source, named by ``train(..., outliers=...)`` / ``--outliers``:

``"digits_jigsaw"`` (the digits' named offline source, :func:`digits_jigsaw`)
    Training digits cut into their four 4 x 4 quadrants and put back in another order.
``"tinyimages300k"``, ``"tinyimagenet"``
    pytorch-ood's ``TinyImages300k`` (``<root>/300K_random_images.npy``, the 300K random
    TinyImages of the Outlier Exposure authors) and ``TinyImageNet`` (its ``train`` images,
    ``<root>/tiny-imagenet-200/train/``), looked up under the data root; downloaded with
    pytorch-ood's own downloaders only with ``download=True`` (``--download``), else a
    :class:`~logitnorm_plugin._core.errors.MissingDataError` says where they are expected.
an image folder (a path)
    Every image under it, flat or in class folders (class names are ignored), resized
    (shorter side) and center-cropped to the ID size, in the ID channels, decoded once and
    cached beside the other decoded sets under the data root (:mod:`.images`).

Every source comes as uint8 :class:`ImageTensors` of the ID dataset's shape and normalisation,
labels ``-1``, so the trainer keeps it on the device and augments and normalises it like the
ID batch. For the digits, image sources are brought to the digits' 17 grey levels, as the
digits' test OOD sets are, so quantisation alone tells nothing. :data:`DEFAULT_OUTLIERS` is
the source ``bench`` gives objectives that need outliers.

Why ``digits_jigsaw`` and why it is disjoint from the test OOD sets
    Outlier Exposure needs images that are clearly not digits but share the low-level
    statistics of digits, so the model learns to withhold confidence on what is not a digit
    rather than on what merely looks unlike the training pixels. A quadrant jigsaw is the
    classic way to get that from the ID data alone (the jigsaw task of Noroozi & Favaro, ECCV
    2016; local rearrangements as synthetic anomalies in CutPaste, Li et al., CVPR 2021): each
    image keeps the pen, the stroke width, the ink and the 17 grey levels of a real digit,
    but the strokes break at the quadrant borders and the global shape is no digit.
    It is disjoint from every test OOD set of the digits benchmark by construction:

    - it is made from the run's *training* split only (``train_full``, or ``train`` when a
      validation split is held out), never from test images; the rotated near-OOD set is
      made from test digits;
    - its generator is none of the test generators: pixels are a training digit's own
      values moved in whole 4 x 4 blocks (not i.i.d. Gaussian or uniform noise, not natural
      image patches), and whole blocks are moved without turning them, which is not a
      rotation; an output equal to any rotation or mirror image of its own source digit
      (possible only for symmetric quadrants) is redrawn;
    - ``tests/test_outliers.py`` checks that no image of it equals a test OOD image, a test
      digit or any rotation or mirror image of a test digit.

    Image ``i`` is a pure function of ``(seed, i)`` and the split: a seeded choice of the
    source digit and of one of the 23 non-identity quadrant orders.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from logitnorm_plugin._core.conventions import canonical_name
from logitnorm_plugin._core.errors import (
    MissingDataError,
    UnknownNameError,
    UserError,
    closest_match,
)
from logitnorm_plugin._core.rng import hash64
from logitnorm_plugin.data import _root, dataset_meta
from logitnorm_plugin.data.catalog import OOD_SETS
from logitnorm_plugin.data.digits import DIGITS_MEAN, DIGITS_STD, load_digits_split
from logitnorm_plugin.data.images import decode_folder, list_images
from logitnorm_plugin.data.noise import quantize
from logitnorm_plugin.data.tensors import ImageTensors
from logitnorm_plugin.objectives import OutlierStream, needs_outliers

__all__ = ["DEFAULT_OUTLIERS", "DIGITS_JIGSAW_SIZE", "OUTLIER_SOURCES", "OutlierSource",
           "default_outlier_source", "digits_jigsaw", "jigsaw_plan", "list_outlier_sources",
           "load_outliers", "outlier_stream", "outliers_for", "resolve_outlier_source"]

#: images of the ``digits_jigsaw`` set (the stream cycles through seeded permutations of it)
DIGITS_JIGSAW_SIZE = 10_000
_JIGSAW_CODE = 7337
#: the 23 quadrant orders other than the identity; quadrants are TL, TR, BL, BR
JIGSAW_ORDERS: Tuple[Tuple[int, ...], ...] = tuple(
    p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)
)


@dataclass(frozen=True)
class OutlierSource:
    """A named outlier source.

    :param name: the name ``--outliers`` takes
    :param dataset: the only ID dataset it serves, or ``None`` for any
    :param description: one line
    :param how_to_get: what a missing-data error says
    """

    name: str
    dataset: str | None
    description: str
    how_to_get: str = ""


OUTLIER_SOURCES: Dict[str, OutlierSource] = {
    s.name: s
    for s in (
        OutlierSource(
            "digits_jigsaw", "digits",
            "training digits with their four 4x4 quadrants reordered (offline, seeded)",
        ),
        OutlierSource(
            "tinyimages300k", None,
            "300K random TinyImages of the Outlier Exposure authors (pytorch-ood)",
            "pass --download (pytorch_ood.dataset.img.TinyImages300k), or put "
            "300K_random_images.npy from https://people.eecs.berkeley.edu/~hendrycks/ into the "
            "data root",
        ),
        OutlierSource(
            "tinyimagenet", None, "Tiny ImageNet training images (pytorch-ood)",
            "pass --download (pytorch_ood.dataset.img.TinyImageNet), or extract "
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip into the data root",
        ),
    )
}

#: the source ``bench`` gives objectives that need outliers, per ID dataset
DEFAULT_OUTLIERS = {"digits": "digits_jigsaw", "cifar10": "tinyimages300k",
                    "cifar100": "tinyimages300k"}


def list_outlier_sources() -> List[str]:
    """Names of the named outlier sources."""
    return sorted(OUTLIER_SOURCES)


def default_outlier_source(dataset: str) -> str | None:
    """The outlier source ``bench`` uses for ``dataset`` (``None`` when there is none)."""
    return DEFAULT_OUTLIERS.get(canonical_name(str(dataset)))


def outliers_for(loss_cls: type, loss_name: str, dataset: str, outliers=None):
    """The outlier source ``bench`` gives an objective: ``outliers`` (default: the dataset's
    named source) if it needs outliers, ``None`` if it takes none.

    :raises UserError: an objective needs outliers and the dataset has no named source
    """

    if not needs_outliers(loss_cls):
        return None
    source = outliers if outliers is not None else default_outlier_source(dataset)
    if source is None:
        raise UserError(
            f"loss '{loss_name}' needs auxiliary outliers and '{dataset}' has no named outlier "
            "source: pass --outliers FOLDER"
        )
    return source


def resolve_outlier_source(spec, dataset: str) -> str:
    """The outlier source as a run records it: a name of :data:`OUTLIER_SOURCES` or the
    absolute path of an image folder. Reads no image.

    :raises UnknownNameError: for an unknown name (with the closest match)
    :raises UserError: for a test OOD set, or a source made for another ID dataset
    :raises MissingDataError: for a path that is not a folder
    """
    text = str(spec)
    key = canonical_name(text)
    if key in OUTLIER_SOURCES:
        source = OUTLIER_SOURCES[key]
        if source.dataset is not None and canonical_name(str(dataset)) != source.dataset:
            raise UserError(
                f"outlier source '{key}' is made from the {source.dataset} training split and "
                f"serves only --dataset {source.dataset}, not '{dataset}'"
            )
        return key
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if key in OOD_SETS or any(key in e.aliases for e in OOD_SETS.values()):
        raise UserError(
            f"'{text}' is a test OOD set; training on it would test on seen outliers. Use "
            f"one of {list_outlier_sources()} or an image folder"
        )
    if "/" in text or "\\" in text or text.startswith("."):
        raise MissingDataError(f"outlier folder {text!r} does not exist")
    raise UnknownNameError("outlier source", text, OUTLIER_SOURCES,
                           closest_match(key, OUTLIER_SOURCES))


# -- digits_jigsaw ------------------------------------------------------------------------------


def _order_maps() -> torch.Tensor:
    """``23 x 64``: for each quadrant order, the source pixel of every output pixel."""
    maps = torch.empty((len(JIGSAW_ORDERS), 64), dtype=torch.int64)
    for k, order in enumerate(JIGSAW_ORDERS):
        for r in range(8):
            for c in range(8):
                q = order[(r // 4) * 2 + c // 4]
                maps[k, r * 8 + c] = ((q // 2) * 4 + r % 4) * 8 + (q % 2) * 4 + c % 4
    return maps


def _symmetries(images: torch.Tensor) -> torch.Tensor:
    """``N x 8 x 64``: the 8 rotations and mirror images of ``N x 8 x 8`` images."""
    out = []
    for flipped in (images, images.flip(-1)):
        for k in range(4):
            out.append(torch.rot90(flipped, k, dims=(-2, -1)).reshape(len(images), 64))
    return torch.stack(out, dim=1)


def jigsaw_plan(seed: int, index: int, pool: int, attempt: int = 0) -> Tuple[int, int]:
    """``(source digit, quadrant order)`` of image ``index``, attempt ``attempt``: indices into
    the training split (of size ``pool``) and :data:`JIGSAW_ORDERS`."""
    h = hash64(_JIGSAW_CODE, seed, index, attempt)
    # two independent draws from the 64-bit hash: the low 32 and the high 32 bits
    return (h & 0xFFFFFFFF) % int(pool), (h >> 32) % len(JIGSAW_ORDERS)


@functools.lru_cache(maxsize=4)
def _jigsaw_images(n: int, seed: int, split: str, split_seed: int) -> torch.Tensor:

    pool = load_digits_split(split, split_seed).images[:, 0]  # P x 8 x 8 uint8
    flat = pool.reshape(len(pool), 64)
    maps = _order_maps()
    symmetries = _symmetries(pool)
    out = torch.empty((n, 64), dtype=torch.uint8)
    todo = torch.arange(n)
    attempt = 0
    while len(todo):
        plans = [jigsaw_plan(seed, int(i), len(pool), attempt) for i in todo.tolist()]
        src = torch.tensor([p[0] for p in plans], dtype=torch.int64)
        order = torch.tensor([p[1] for p in plans], dtype=torch.int64)
        made = flat[src].gather(1, maps[order])
        # an output that is a rotation or mirror image of its own source is redrawn
        same = (symmetries[src] == made.unsqueeze(1)).all(dim=2).any(dim=1)
        out[todo[~same]] = made[~same]
        todo = todo[same]
        attempt += 1
        if attempt > 64:  # pragma: no cover - needs a fully symmetric training digit
            raise RuntimeError("digits_jigsaw: could not draw a non-symmetric arrangement")
    out = out.view(n, 1, 8, 8)
    out.requires_grad_(False)
    return out


def digits_jigsaw(
    n: int = DIGITS_JIGSAW_SIZE,
    seed: int = 0,
    split: str = "train_full",
    split_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageTensors:
    """``"digits_jigsaw"``: ``n`` training digits with their quadrants reordered (labels
    ``-1``); see the module doc for why this source and why it is disjoint from the test sets.

    Image ``i``: the digit and the quadrant order of :func:`jigsaw_plan` ``(seed, i, ...)``;
    an arrangement equal to a rotation or mirror image of its digit is redrawn (next attempt).

    :param n: number of images
    :param seed: the set's seed
    :param split: the training split the digits come from: ``"train_full"`` or ``"train"``
    :param split_seed: the seed of the ``train`` / ``val`` hold-out
    """

    if split not in ("train", "train_full"):
        raise ValueError(f"digits_jigsaw uses a training split, not {split!r}")
    images = _jigsaw_images(int(n), int(seed), split, int(split_seed)).clone()
    labels = torch.full((int(n),), -1, dtype=torch.int64)
    return ImageTensors(images, labels, mean or DIGITS_MEAN, std or DIGITS_STD,
                        "digits_jigsaw")


# -- image sources ------------------------------------------------------------------------------


def _fit(images: torch.Tensor, size, channels: int, levels: int) -> torch.Tensor:
    """uint8 ``N x C x H x W`` -> the ID size (resize shorter side + center crop), channels
    (ITU-R 601 luma for grey) and grey levels, in chunks."""
    import torchvision.transforms.functional as TF


    size = (int(size[0]), int(size[1]))
    parts = []
    for chunk in torch.split(images, 8192):
        x = chunk
        if x.shape[1] == 3 and channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        elif x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[2:]) != size:
            x = TF.center_crop(TF.resize(x, min(size), antialias=True), list(size))
        if levels != 256:
            x = quantize(x.float() / 255.0, levels)
        parts.append(x.contiguous())
    return torch.cat(parts) if parts else images


def _tinyimages300k(root: Path, download: bool) -> torch.Tensor:
    file = root / "300K_random_images.npy"
    if not file.is_file() and download:
        from pytorch_ood.dataset.img import TinyImages300k

        root.mkdir(parents=True, exist_ok=True)
        TinyImages300k(str(root), download=True)
    if not file.is_file():
        raise MissingDataError(
            f"outlier source 'tinyimages300k' not found: expected {file}. "
            + OUTLIER_SOURCES["tinyimages300k"].how_to_get
        )
    data = np.load(file)  # N x 32 x 32 x 3 uint8 (read whole: writable, as torch wants it)
    return torch.from_numpy(data).permute(0, 3, 1, 2)


def _tinyimagenet(root: Path, download: bool, size, channels: int) -> torch.Tensor:

    folder = root / "tiny-imagenet-200" / "train"
    if not folder.is_dir() and download:
        from pytorch_ood.dataset.img import TinyImageNet

        root.mkdir(parents=True, exist_ok=True)
        TinyImageNet(str(root), subset="train", download=True)
    if not folder.is_dir():
        raise MissingDataError(
            f"outlier source 'tinyimagenet' not found: expected images under {folder}. "
            + OUTLIER_SOURCES["tinyimagenet"].how_to_get
        )
    return decode_folder(folder, size, "resize_crop", channels, cache_root=root,
                         cache_name="tinyimagenet-train")


def load_outliers(
    source: str,
    dataset: str,
    seed: int = 0,
    train_split: str = "train_full",
    split_seed: int = 0,
    root=None,
    download: bool = False,
) -> ImageTensors:
    """The outlier set ``source`` (a value of :func:`resolve_outlier_source`) for training on
    ``dataset``: uint8 images of the ID shape, normalised like the ID data, labels ``-1``.

    :param seed: seed of the named digits source
    :param train_split: the run's training split (the digits source is made from it)
    :param split_seed: seed of the ``train`` / ``val`` hold-out
    :param root: data root (pytorch-ood's sets; the decode cache of image folders)
    :param download: let pytorch-ood download a missing named set
    :raises MissingDataError: the data is not on disk (and ``download`` is false), or a folder
        holds no image
    """

    meta = dataset_meta(dataset)
    size, channels = tuple(meta["size"]), int(meta["in_channels"])
    levels = 17 if canonical_name(str(dataset)) == "digits" else 256
    source = resolve_outlier_source(source, dataset)
    root = _root(root)
    if source == "digits_jigsaw":
        ds = digits_jigsaw(seed=seed, split=train_split, split_seed=split_seed)
        return ds.with_normalization(meta["mean"], meta["std"])
    if source == "tinyimages300k":
        images = _fit(_tinyimages300k(root, download), size, channels, levels)
    elif source == "tinyimagenet":
        images = _fit(_tinyimagenet(root, download, size, channels), size, channels, levels)
    else:
        folder = Path(source)
        files = list_images(folder)
        if not files:
            raise MissingDataError(f"outlier folder {source!r} holds no images")
        images = decode_folder(folder, size, "resize_crop", channels, cache_root=root,
                               files=files, cache_name=f"outliers-{folder.name}")
        images = _fit(images, size, channels, levels)
    labels = torch.full((len(images),), -1, dtype=torch.int64)
    name = Path(source).name if source not in OUTLIER_SOURCES else source
    return ImageTensors(images, labels, meta["mean"], meta["std"], name)


def outlier_stream(config, rank: int, world_size: int, device, root=None,
                   download: bool = False):
    """The :class:`~logitnorm_plugin.objectives.OutlierStream` of a training run (its outlier
    set on ``device``), or ``None`` for a run without outliers.

    :param config: the run's :class:`~logitnorm_plugin.training.config.TrainConfig`
    """

    if config.outliers is None:
        return None
    ood = load_outliers(config.outliers, config.dataset, config.outlier_seed,
                        config.train_split, config.split_seed, root, download)
    return OutlierStream(ood.images.to(device), config.outlier_batch_size,
                         config.outlier_seed, rank, world_size)
