"""The tables of datasets: ID datasets (:data:`DATASETS`) and OOD test sets (:data:`OOD_SETS`).

Plain records, no loading: every reader of :mod:`logitnorm_plugin.data` looks names up here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

from logitnorm_plugin._core.conventions import canonical_name
from logitnorm_plugin._core.errors import UnknownNameError, closest_match

__all__ = ["DATASETS", "OOD_SETS", "PAPER_OOD", "DatasetEntry", "OODEntry", "dataset_entry",
           "ood_entry"]


@dataclass(frozen=True)
class DatasetEntry:
    """An ID dataset: its shape, classes and the normalisation a model trained on it uses.

    ``mean`` / ``std`` are per-channel statistics of the training pixels in ``[0, 1]``.
    """

    name: str
    num_classes: int
    in_channels: int
    size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    test_size: int
    description: str = ""
    how_to_get: str = ""


DATASETS: Dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry(
            "digits", 10, 1, (8, 8), (0.30560,), (0.37596,), 540,
            "scikit-learn digits, 8x8 grey, bundled with scikit-learn (no download)",
        ),
        # statistics of the 50,000 training images (as OpenOOD and pytorch-ood's LogitNorm
        # weights use); the LogitNorm code used (0.492, 0.482, 0.446) / (0.247, 0.244, 0.262)
        # for both CIFARs: ImageTensors.with_normalization reproduces that.
        DatasetEntry(
            "cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
            10000, "CIFAR-10 python batches (torchvision)",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        ),
        DatasetEntry(
            "cifar100", 100, 3, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
            10000, "CIFAR-100 python batches (torchvision)",
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        ),
    )
}


@dataclass(frozen=True)
class OODEntry:
    """An OOD test set.

    :param name: stable name (results tables, specs)
    :param family: ``"digits"`` (1 x 8 x 8 only), ``"noise"`` (any shape) or ``"image"``
    :param folders: candidate folders under the data root, first existing one wins
    :param preprocess: ``"resize_crop"`` (resize shorter side, center crop) or ``"as_is"``
        (published at the target size; other sizes are still resized and cropped)
    :param how_to_get: what the MissingDataError says
    """

    name: str
    family: str
    description: str
    folders: Tuple[str, ...] = ()
    preprocess: str = "resize_crop"
    how_to_get: str = ""
    aliases: Tuple[str, ...] = field(default_factory=tuple)


_ODIN_DROPBOX = "https://www.dropbox.com/s/{}/{}.tar.gz"
OOD_SETS: Dict[str, OODEntry] = {
    e.name: e
    for e in (
        OODEntry("patches", "digits", "grey natural-image patches (scikit-learn samples)"),
        OODEntry("rotated", "digits", "test digits rotated by +-90 degrees, no zeros (near)"),
        OODEntry("gaussian", "noise", "clip(N(0.5, 0.25^2)) pixel noise, seeded per index"),
        OODEntry("uniform", "noise", "U(0, 1) pixel noise, seeded per index"),
        OODEntry(
            "textures", "image", "Describable Textures (DTD), all 5,640 images",
            ("dtd/images",), "resize_crop",
            "pytorch_ood.dataset.img.Textures(root, download=True), or extract "
            "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz into root",
            ("dtd", "texture"),
        ),
        OODEntry(
            "svhn", "svhn", "SVHN test split (26,032 images)", ("svhn",), "as_is",
            "torchvision.datasets.SVHN(root/'svhn', split='test', download=True), or put "
            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat there",
        ),
        OODEntry(
            "places365", "image", "Places365 images in an ImageFolder tree", ("places365",),
            "resize_crop",
            "pytorch_ood.dataset.img.Places365(root, download=True) (needs gdown), or any "
            "Places365 test subset as root/places365/<class>/*.jpg",
        ),
        OODEntry(
            "lsun_crop", "image", "LSUN crops (ODIN release), 32x32", ("LSUN", "LSUN_C"),
            "as_is",
            "pytorch_ood.dataset.img.LSUNCrop(root, download=True), or extract "
            + _ODIN_DROPBOX.format("fhtsw1m3qxlwj6h", "LSUN") + " into root",
            ("lsun_c", "lsun-c"),
        ),
        OODEntry(
            "lsun_resize", "image", "LSUN resized (ODIN release), 32x32",
            ("LSUN_resize", "LSUN_R"), "as_is",
            "pytorch_ood.dataset.img.LSUNResize(root, download=True), or extract "
            + _ODIN_DROPBOX.format("moqh2wh8696c3yl", "LSUN_resize") + " into root",
            ("lsun_r", "lsun-r"),
        ),
        OODEntry(
            "isun", "image", "iSUN (ODIN release), 32x32", ("iSUN",), "as_is",
            "extract https://www.dropbox.com/s/ssz7qxfqae0cca5/iSUN.tar.gz into root "
            "(pytorch-ood has no iSUN class)",
        ),
        OODEntry("cifar10", "cifar", "CIFAR-10 test split as OOD"),
        OODEntry("cifar100", "cifar", "CIFAR-100 test split as OOD"),
    )
}

#: the LogitNorm paper's OOD sets for CIFAR, in the paper's table order
PAPER_OOD = ("textures", "svhn", "places365", "lsun_crop", "lsun_resize", "isun")


def dataset_entry(name: str) -> DatasetEntry:
    """The ID dataset called ``name`` (case-insensitive, ``-`` == ``_``).

    :raises UnknownNameError: for an unknown name, with the closest match
    """
    key = canonical_name(name)
    if key in DATASETS:
        return DATASETS[key]
    raise UnknownNameError("dataset", str(name), DATASETS, closest_match(key, DATASETS))


def ood_entry(name: str) -> OODEntry:
    """The OOD set called ``name`` or one of its aliases.

    :raises UnknownNameError: for an unknown name, with the closest match
    """
    key = canonical_name(name)
    for entry in OOD_SETS.values():
        if key == entry.name or key in entry.aliases:
            return entry
    raise UnknownNameError("OOD set", str(name), OOD_SETS, closest_match(key, OOD_SETS))
