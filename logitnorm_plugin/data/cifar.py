"""CIFAR-10/100 and SVHN through torchvision's own readers, into uint8 tensors.

Layouts (torchvision's, and the LogitNorm code's):

- CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
- CIFAR-100: ``<root>/cifar-100-python/{train, test, meta}``
- SVHN test: ``<root>/svhn/test_32x32.mat``

torchvision checks the published MD5 of every file before reading, always, not only on
download, and this module never switches that off: the CIFAR batches are Python pickles, and
only a verified file is unpickled.

When ``download=True`` and the download fails (no network, a proxy, a damaged archive), the
:class:`~logitnorm_plugin._core.errors.MissingDataError` says so, names the URL and where to put
the file by hand; only without ``download`` does it suggest passing ``download=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from logitnorm_plugin._core.errors import MissingDataError
from logitnorm_plugin.data.catalog import DATASETS
from logitnorm_plugin.data.tensors import ImageTensors

__all__ = ["load_cifar", "load_svhn"]

_CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"


def _cifar_class(which: str):
    from torchvision.datasets import CIFAR10, CIFAR100

    if which not in _CIFAR_URLS:
        raise ValueError(f"unknown CIFAR variant {which!r}")
    return CIFAR10 if which == "cifar10" else CIFAR100


def load_cifar(
    which: str, train: bool, root, download: bool = False
) -> ImageTensors:
    """CIFAR-10 or CIFAR-100 (one split) as :class:`ImageTensors`, normalised with the
    training statistics of :data:`logitnorm_plugin.data.DATASETS`.

    :param which: ``"cifar10"`` or ``"cifar100"``
    :param train: the 50,000 training images (else the 10,000 test images)
    :param root: folder that holds (or gets) ``cifar-10-batches-py`` / ``cifar-100-python``
    :param download: let torchvision download the archive if it is missing
    :raises MissingDataError: missing or corrupted files and ``download`` is false, or the
        download failed (names the URL and where to extract the archive by hand)
    """
    cls = _cifar_class(which)
    root = Path(root)
    folder = root / cls.base_folder
    if not download and not folder.is_dir():
        raise MissingDataError(
            f"Dataset '{which}' not found: expected the CIFAR python batches in {folder}. "
            f"To get it, pass download=True (CLI: --download), or download "
            f"{_CIFAR_URLS[which]} and extract it into {root}."
        )
    try:
        ds = cls(str(root), train=train, download=download)
    except (RuntimeError, OSError) as exc:  # integrity check failed, or the download did
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        if download:
            raise MissingDataError(
                f"Downloading dataset '{which}' from {_CIFAR_URLS[which]} into {root} failed "
                f"({exc}). To get it by hand: download that file where there is network "
                f"access, extract it into {root} (giving {folder}/{files[0]}, ...), then run "
                f"again."
            ) from exc
        raise MissingDataError(
            f"Dataset '{which}' in {folder} is missing, incomplete or corrupted ({exc}); "
            f"expected the "
            f"files {', '.join(files)} of {_CIFAR_URLS[which]} (checked by MD5). Pass "
            f"download=True (CLI: --download) to fetch them again."
        ) from exc
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    meta = DATASETS[which]
    return ImageTensors(images, labels, meta.mean, meta.std, which, list(ds.classes))


def load_svhn(
    root,
    download: bool = False,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    split: str = "test",
) -> ImageTensors:
    """SVHN (``<root>/svhn/<split>_32x32.mat``) with its digit labels 0-9.

    :raises MissingDataError: the file is missing or corrupted and ``download`` is false, or
        the download failed (names the URL and where to put the file by hand)
    """
    from torchvision.datasets import SVHN

    folder = Path(root) / "svhn"
    filename = SVHN.split_list[split][1]
    if not download and not (folder / filename).is_file():
        raise MissingDataError(
            f"OOD set 'svhn' not found: expected {folder / filename}. To get it, pass "
            f"download=True (CLI: --download), or use torchvision.datasets.SVHN("
            f"'{folder}', split='{split}', download=True), or put "
            f"{SVHN.split_list[split][0]} there."
        )
    try:
        ds = SVHN(str(folder), split=split, download=download)
    except (RuntimeError, OSError) as exc:
        if download:
            raise MissingDataError(
                f"Downloading SVHN from {SVHN.split_list[split][0]} into {folder} failed "
                f"({exc}). To get it by hand: download that file where there is network "
                f"access and put it at {folder / filename}, then run again."
            ) from exc
        raise MissingDataError(
            f"SVHN file {folder / filename} is missing or corrupted ({exc}); pass download=True "
            f"(CLI: --download) or replace it with {SVHN.split_list[split][0]}."
        ) from exc
    images = torch.from_numpy(np.ascontiguousarray(ds.data))  # torchvision: N x 3 x 32 x 32
    labels = torch.as_tensor(ds.labels, dtype=torch.int64)
    return ImageTensors(images, labels, mean, std, "svhn")
