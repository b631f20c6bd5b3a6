"""Datasets by name, decoded once into uint8 tensors (:class:`ImageTensors`).

ID datasets (:data:`DATASETS`)
    ``"digits"`` (scikit-learn, embedded, no download; see :mod:`.digits`), ``"cifar10"`` and
    ``"cifar100"`` (torchvision's readers of the CIFAR python batches under ``root``), or the
    path of an image folder (``<path>/train/<class>/*`` and ``<path>/test/<class>/*``).

Splits
    ``"test"`` (fixed), ``"train_full"`` (the whole training split), ``"val"`` (a stratified
    hold-out of ``train_full`` chosen by ``seed``: 10%), ``"train"`` (``train_full`` minus
    ``val``). Use ``train_full`` to follow the LogitNorm paper (no validation split), ``train``
    + ``val`` for tuning and best-checkpoint selection.

OOD sets (:data:`OOD_SETS`), labels ``-1``
    digits: ``"patches"``, ``"rotated"``; any image size: ``"gaussian"``, ``"uniform"``; the
    LogitNorm paper's six for CIFAR: ``"textures"``, ``"svhn"``, ``"places365"``,
    ``"lsun_crop"``, ``"lsun_resize"``, ``"isun"``; and ``"cifar10"`` / ``"cifar100"`` (test
    split) as near-OOD for each other.

Data root
    ``root`` argument, else the environment variable ``LOGITNORM_PLUGIN_DATA``, else
    ``~/.cache/logitnorm-plugin/data``. Nothing is downloaded unless ``download=True``;
    missing data raises :class:`~logitnorm_plugin._core.errors.MissingDataError` with the expected
    path and how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from logitnorm_plugin._core.conventions import canonical_name, dataset_tag

# the readers are looked up on their module when called: a benchmark script can substitute one
from logitnorm_plugin.data import cifar
from logitnorm_plugin.data.catalog import (
    DATASETS,
    OOD_SETS,
    PAPER_OOD,
    DatasetEntry,
    OODEntry,
    dataset_entry,
    ood_entry,
)
from logitnorm_plugin.data.digits import digits_ood, load_digits_split
from logitnorm_plugin.data.images import (
    folder_dataset_meta,
    load_folder_dataset,
    load_ood_folder,
    resize_tensors,
    training_statistics,
)
from logitnorm_plugin.data.noise import NoiseDataset
from logitnorm_plugin.data.tensors import ImageTensors

__all__ = [
    "DATASETS",
    "OOD_SETS",
    "PAPER_OOD",
    "SPLITS",
    "DatasetEntry",
    "ImageTensors",
    "OODEntry",
    "OpenedDataset",
    "dataset_meta",
    "default_root",
    "load_ood",
    "list_datasets",
    "list_ood_sets",
    "load_split",
    "open_dataset",
    "paper_ood_size",
    "stratified_holdout",
    "subsample_ood",
]

SPLITS = ("train", "val", "train_full", "test")
VAL_FRACTION = 0.1


def default_root() -> Path:
    """``$LOGITNORM_PLUGIN_DATA`` or ``~/.cache/logitnorm-plugin/data``."""
    env = os.environ.get("LOGITNORM_PLUGIN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache/logitnorm-plugin/data"


def _root(root) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


def _is_folder_dataset(name) -> bool:
    return canonical_name(name) not in DATASETS and Path(str(name)).expanduser().is_dir()


def dataset_meta(name: str) -> dict:
    """``dict(num_classes, in_channels, size, mean, std)`` of an ID dataset.

    For an image-folder path the statistics are computed from its training images (which
    decodes them; the decoded tensors are cached next to the data).
    """
    if _is_folder_dataset(name):

        return folder_dataset_meta(Path(str(name)).expanduser())
    return entry_meta(dataset_entry(name))


def entry_meta(e: DatasetEntry) -> dict:
    """:func:`dataset_meta` of a registered dataset."""
    return {
        "num_classes": e.num_classes,
        "in_channels": e.in_channels,
        "size": e.size,
        "mean": e.mean,
        "std": e.std,
    }


def stratified_holdout(
    labels: Sequence[int], fraction: float, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Split indices into ``(kept, held_out)`` with ``round(fraction * N)`` held out (at least
    one when ``N >= 2``), spread over the classes in proportion to their sizes.

    Within each class the order is a seeded permutation; element ``j`` of a class of size
    ``m`` gets the rank ``(j + u) / m`` (``u`` uniform in ``[0, 1)``) and the smallest ranks
    are held out, which is proportional allocation that also works for tiny classes. A pure
    function of ``(labels, fraction, seed)``; both index arrays are sorted.
    """
    labels = np.asarray(labels)
    n = len(labels)
    n_held = int(round(fraction * n))
    if n >= 2:
        n_held = min(max(n_held, 1), n - 1)
    rng = np.random.default_rng([int(seed), 4242])
    rank = np.empty(n, dtype=np.float64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        rank[idx] = (np.arange(len(idx)) + rng.random(len(idx))) / len(idx)
    held = np.sort(np.argsort(rank, kind="stable")[:n_held])
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held


def _split_of(train_full: ImageTensors, split: str, seed: int) -> ImageTensors:
    if split == "train_full":
        return train_full
    kept, held = stratified_holdout(train_full.labels.cpu().numpy(), VAL_FRACTION, seed)
    return train_full.subset(kept if split == "train" else held)


def load_split(
    name: str, split: str, root=None, download: bool = False, seed: int = 0
) -> ImageTensors:
    """One split of an ID dataset as :class:`ImageTensors` (normalised with the dataset's
    training statistics, see :func:`dataset_meta`).

    :param name: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or an image-folder path
    :param split: ``"train"``, ``"val"``, ``"train_full"`` or ``"test"``
    :param root: data root (ignored for digits)
    :param download: download missing data (never for digits: it is bundled)
    :param seed: chooses the ``val`` hold-out; ``test`` is fixed
    :raises MissingDataError: data not under ``root`` and ``download`` is false
    :raises UnknownNameError: unknown dataset name
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
    return open_dataset(name, read=False).split(split, root, download, seed)


# -- an ID dataset resolved once ------------------------------------------------------------


@dataclass(frozen=True)
class OpenedDataset:
    """An ID dataset whose name was read and resolved once (:func:`open_dataset`).

    The rule: a run resolves its dataset name once (canonical form, registered name or image
    folder, statistics) and reads an image folder's training images once; everything after
    that goes by this record. Its splits are those :func:`load_split` gives.

    :param key: the dataset as a configuration records it: the canonical registered name, or
        the image folder's path as given
    :param entry: the registered dataset (``None`` for an image folder)
    :param folder: the image folder (``None`` for a registered dataset)
    :param meta: ``dict(num_classes, in_channels, size, mean, std)`` (:func:`dataset_meta`)
    :param train_full: an image folder's training images, decoded once and normalised with
        ``meta`` (``None`` for a registered dataset, whose splits are read when asked for)
    """

    key: str
    entry: DatasetEntry | None
    folder: Path | None
    meta: Dict[str, Any] | None
    train_full: ImageTensors | None = None

    @property
    def tag(self) -> str:
        """The dataset part of a model key and a run-folder name (:func:`dataset_tag`)."""
        return self.key if self.folder is None else dataset_tag(self.key)

    def split(self, split: str, root=None, download: bool = False, seed: int = 0
              ) -> ImageTensors:
        """One split, as :func:`load_split` gives it."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
        if self.folder is not None:
            if split == "test":
                size, mean, std = (None, None, None) if self.meta is None else (
                    tuple(self.meta["size"]), self.meta["mean"], self.meta["std"])
                return load_folder_dataset(self.folder, "test", size, mean, std)
            train_full = self.train_full
            if train_full is None:
                train_full = load_folder_dataset(self.folder, "train")
            return _split_of(train_full, split, seed)
        if self.entry.name == "digits":

            return load_digits_split(split, seed)

        if split == "test":
            return cifar.load_cifar(self.entry.name, train=False, root=_root(root),
                                    download=download)
        full = cifar.load_cifar(self.entry.name, train=True, root=_root(root), download=download)
        return _split_of(full, split, seed)


def open_dataset(name, key: str | None = None, read: bool = True) -> OpenedDataset:
    """The ID dataset called ``name`` (a registered name, case-insensitive, or an image-folder
    path), resolved once; with ``read``, an image folder's training images are decoded here
    (for its statistics, and kept for its training splits).

    :param key: ``canonical_name(name)`` where the caller has it already
    :param read: ``False``: resolve the name only (``meta`` of an image folder is then
        ``None``; its splits are read when asked for, as :func:`load_split` does)
    :raises UnknownNameError: for a name that is neither registered nor a folder
    """
    key = canonical_name(name) if key is None else key
    entry = DATASETS.get(key)
    folder = Path(str(name)).expanduser()
    if entry is None and folder.is_dir():
        if not read:
            return OpenedDataset(str(name), None, folder, None)
        decoded = load_folder_dataset(folder, "train", mean=(0.0,) * 3, std=(1.0,) * 3)
        meta = training_statistics(decoded)
        return OpenedDataset(str(name), None, folder, meta,
                             decoded.with_normalization(meta["mean"], meta["std"]))
    if entry is None:
        entry = dataset_entry(name)  # raises, naming the closest registered dataset
    return OpenedDataset(key, entry, None, entry_meta(entry))


def load_ood(
    name: str,
    root=None,
    download: bool = False,
    size: Tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    n: int | None = None,
    channels: int | None = None,
    like: str | OpenedDataset | None = None,
) -> ImageTensors:
    """An OOD test set as :class:`ImageTensors` with labels ``-1``.

    Defaults for ``size``, ``channels``, ``mean``, ``std`` and the noise size come from the
    ID dataset ``like`` (default ``"digits"`` for the digits sets, else ``"cifar10"``).

    :param name: a name of :data:`OOD_SETS` (case-insensitive, ``-`` == ``_``)
    :param root: data root for the image sets
    :param download: fetch missing data with pytorch-ood's / torchvision's downloaders
    :param size: ``(H, W)`` the images are brought to
    :param mean: normalisation mean, normally the ID training statistics
    :param std: normalisation std
    :param seed: seed of noise images, patch positions, rotations and of ``n``-subsampling
    :param n: number of images (noise: generated; others: seeded subsample, all if ``None``)
    :param channels: 1 (grey) or 3 (RGB)
    :param like: ID dataset whose metadata fills the defaults: a name, or the
        :class:`OpenedDataset` of one (resolved once by the caller)
    :raises MissingDataError: data not under ``root`` and ``download`` is false
    """
    entry = ood_entry(name)
    if like is None:
        like = "digits" if entry.family == "digits" else "cifar10"
    if not isinstance(like, OpenedDataset):
        like = open_dataset(like)
    meta = like.meta
    size = tuple(size) if size is not None else tuple(meta["size"])
    channels = int(channels) if channels is not None else int(meta["in_channels"])
    mean = tuple(mean) if mean is not None else tuple(meta["mean"])
    std = tuple(std) if std is not None else tuple(meta["std"])

    if entry.family == "digits":
        if size != (8, 8) or channels != 1:
            raise ValueError(f"OOD set {entry.name!r} exists only as 1x8x8 (digits)")

        return digits_ood(entry.name, seed=seed, mean=mean, std=std, n=n)
    if entry.family == "noise":

        if n is None:
            n = like.entry.test_size if like.entry is not None else 1000
        levels = 17 if like.key == "digits" else 256
        shape = (channels, *size)
        return NoiseDataset(entry.name, n, shape, seed, mean, std, levels).materialize()

    root = _root(root)
    if entry.family == "cifar":

        ds = cifar.load_cifar(entry.name, train=False, root=root, download=download)
        ds = ds.with_normalization(mean, std)
    elif entry.family == "svhn":

        ds = cifar.load_svhn(root, download=download, mean=mean, std=std)
    else:

        ds = load_ood_folder(entry, root, download=download, size=size, mean=mean, std=std)
    if ds.shape[0] != channels:
        ds = _to_channels(ds, channels)
    if tuple(ds.shape[1:]) != size:

        ds = resize_tensors(ds, size)
    ds = ds.as_ood(entry.name)
    if n is not None and n < len(ds):
        ds = ds.subset(subsample_ood(len(ds), n, repeats=1, seed=seed)[0])
    return ds


def _to_channels(ds: ImageTensors, channels: int) -> ImageTensors:
    imgs = ds.images
    if channels == 1 and imgs.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], device=imgs.device).view(1, 3, 1, 1)
        imgs = (imgs.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    elif channels == 3 and imgs.shape[1] == 1:
        imgs = imgs.expand(-1, 3, -1, -1).contiguous()
    else:
        raise ValueError(f"cannot convert {imgs.shape[1]} channels to {channels}")
    mean = ds.mean[:1] * channels if len(set(ds.mean)) == 1 else None
    std = ds.std[:1] * channels if len(set(ds.std)) == 1 else None
    if mean is None or std is None:
        raise ValueError("pass mean and std with the target number of channels")
    return ImageTensors(imgs, ds.labels, mean, std, ds.name)


def paper_ood_size(id_test_size: int) -> int:
    """The LogitNorm paper's OOD sample size: a fifth of the ID test set (2,000 for CIFAR)."""
    return int(id_test_size) // 5


def subsample_ood(population: int, n: int, repeats: int = 10, seed: int = 0) -> List[np.ndarray]:
    """Seeded subsamples for the paper protocol (``repeats`` draws of ``n`` OOD images).

    The LogitNorm code evaluates each OOD set on ``ID-test-size / 5`` images and averages 10
    repetitions; this returns the index arrays of those draws as a pure function of
    ``(population, n, repeats, seed)``: draw ``r`` is the same in every run. Each draw is
    without replacement and sorted; draws are independent of each other. With
    ``n >= population`` every draw is all indices.

    :param population: size of the OOD set
    :param n: images per draw (see :func:`paper_ood_size`)
    :param repeats: number of draws
    :param seed: base seed
    :return: ``repeats`` int64 arrays of length ``min(n, population)``
    """
    if n < 1 or repeats < 1:
        raise ValueError("n and repeats must be >= 1")
    out = []
    for r in range(repeats):
        if n >= population:
            out.append(np.arange(population, dtype=np.int64))
            continue
        rng = np.random.default_rng([int(seed), int(r), 5555])
        out.append(np.sort(rng.choice(population, size=n, replace=False)).astype(np.int64))
    return out


def list_datasets() -> List[str]:
    """Names of the ID datasets."""
    return sorted(DATASETS)


def list_ood_sets() -> List[str]:
    """Names of the OOD sets."""
    return sorted(OOD_SETS)
