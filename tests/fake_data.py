"""Writers of tiny datasets in the real on-disk formats, for tests.

Every writer produces the exact layout and file format that the real data has (CIFAR python
pickles, SVHN ``.mat``, image-folder trees, OpenOOD image lists), so the code under test runs
the same readers it runs on real data. Images are random but learnable: each class has its
own colour tint and stripe direction, so a model can fit them in a few steps.

torchvision verifies the published MD5 sums of the CIFAR and SVHN files before it reads them,
and the package never switches that off. A fixture cannot match the published sums, so the
writers record the MD5 of every file they write in :data:`WRITTEN_MD5`, and the test session
(``conftest.py``) extends torchvision's integrity check to accept exactly those contents: a
changed byte still fails.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np

from logitnorm_plugin._core.atomic import write_bytes, write_text

#: MD5 of every CIFAR/SVHN file written by this module in this process
WRITTEN_MD5: set = set()

__all__ = [
    "fake_images",
    "write_cifar",
    "write_image_folder",
    "write_openood",
    "write_paper_ood_sets",
    "write_svhn",
]

def _remember(path: Path) -> None:
    import hashlib

    WRITTEN_MD5.add(hashlib.md5(Path(path).read_bytes()).hexdigest())


def fake_images(labels: Sequence[int], size: Tuple[int, int], seed: int = 0) -> np.ndarray:
    """``N x H x W x 3`` uint8 images, noise plus a class-dependent tint and stripe pattern."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = rng.integers(0, 96, size=(len(labels), h, w, 3)).astype(np.float64)
    for i, c in enumerate(labels):
        tint = np.array([(c * 73) % 160, (c * 131) % 160, (c * 199) % 160], dtype=np.float64)
        stripes = ((xx if c % 2 else yy) // (1 + c % 4)) % 2 * 40.0
        out[i] += tint + stripes[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _pickle(path: Path, obj) -> None:
    write_bytes(path, pickle.dumps(obj, protocol=2))
    _remember(path)


def write_cifar(
    root, which: str = "cifar10", n_train: int = 50, n_test: int = 20, seed: int = 0
) -> Path:
    """A tiny CIFAR-10/100 in torchvision's python-batch format under ``root``.

    CIFAR-10: ``cifar-10-batches-py/data_batch_1..5`` (the training images spread over five
    batches), ``test_batch``, ``batches.meta``. CIFAR-100: ``cifar-100-python/train``,
    ``test``, ``meta`` (fine and coarse labels). Labels cycle through the classes.

    :return: the dataset folder
    """
    if which not in ("cifar10", "cifar100"):
        raise ValueError(f"which must be 'cifar10' or 'cifar100', got {which!r}")
    k = 10 if which == "cifar10" else 100
    folder = Path(root) / ("cifar-10-batches-py" if which == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    train_y = np.arange(n_train) % k
    test_y = np.arange(n_test) % k
    train_x = fake_images(train_y, (32, 32), seed).transpose(0, 3, 1, 2).reshape(n_train, -1)
    test_x = fake_images(test_y, (32, 32), seed + 1).transpose(0, 3, 1, 2).reshape(n_test, -1)

    def batch(x, y, label):
        d = {"batch_label": label, "data": x, "filenames": [f"img_{i}.png" for i in range(len(y))]}
        if which == "cifar10":
            d["labels"] = [int(v) for v in y]
        else:
            d["fine_labels"] = [int(v) for v in y]
            d["coarse_labels"] = [int(v) // 5 for v in y]
        return d

    if which == "cifar10":
        parts = np.array_split(np.arange(n_train), 5)
        for b, idx in enumerate(parts, start=1):
            _pickle(folder / f"data_batch_{b}",
                    batch(train_x[idx], train_y[idx], f"training batch {b} of 5"))
        _pickle(folder / "test_batch", batch(test_x, test_y, "testing batch 1 of 1"))
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]
        _pickle(folder / "batches.meta",
                {"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072})
    else:
        _pickle(folder / "train", batch(train_x, train_y, "training batch 1 of 1"))
        _pickle(folder / "test", batch(test_x, test_y, "testing batch 1 of 1"))
        _pickle(folder / "meta", {
            "fine_label_names": [f"class_{i:03d}" for i in range(100)],
            "coarse_label_names": [f"super_{i:02d}" for i in range(20)],
        })
    return folder


def write_svhn(root, n: int = 20, seed: int = 0, split: str = "test") -> Path:
    """A tiny SVHN ``<root>/svhn/<split>_32x32.mat`` (``X``: 32 x 32 x 3 x N uint8, ``y``:
    N x 1 with 10 for the digit 0, as published).

    :return: the ``.mat`` file
    """
    from scipy.io import savemat

    folder = Path(root) / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    digits = np.arange(n) % 10
    x = fake_images(digits, (32, 32), seed).transpose(1, 2, 3, 0)  # H x W x C x N
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    path = folder / f"{split}_32x32.mat"
    savemat(str(path), {"X": np.ascontiguousarray(x), "y": y})
    _remember(path)
    return path


def write_image_folder(
    root,
    classes: Sequence[str] | None = ("a", "b"),
    n_per_class: int = 4,
    size: Tuple[int, int] = (32, 32),
    fmt: str = "png",
    seed: int = 0,
) -> Path:
    """An image-folder tree ``<root>/<class>/img_<i>.<fmt>`` (flat ``<root>/*`` when
    ``classes`` is ``None``).

    :param size: ``(H, W)`` of every image
    :param fmt: ``"png"``, ``"jpg"`` / ``"jpeg"`` or any other PIL format suffix
    :return: ``root``
    """
    from PIL import Image

    root = Path(root)
    folders = [root] if not classes else [root / c for c in classes]
    for ci, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        labels = np.full(n_per_class, ci)
        for i, arr in enumerate(fake_images(labels, size, seed * 1000 + ci)):
            Image.fromarray(arr).save(folder / f"img_{i:04d}.{fmt}")
    return root


def write_paper_ood_sets(root, n: int = 6, seed: int = 0) -> Dict[str, Path]:
    """The LogitNorm paper's six OOD sets in the layouts their published archives extract to.

    ``dtd/images/<class>/*.jpg`` (Textures, larger non-square images: resized + cropped),
    ``svhn/test_32x32.mat``, ``places365/<class>/*.jpg`` (larger), ``LSUN/test/*.jpg``,
    ``LSUN_resize/LSUN_resize/*.jpg`` and ``iSUN/iSUN_patches/*.jpeg`` (32 x 32).

    :param n: images per set (for folder trees with two classes: ``n // 2`` per class)
    :return: OOD-set name -> the folder (or file) written
    """
    root = Path(root)
    half = max(1, n // 2)
    return {
        "textures": write_image_folder(root / "dtd/images", ["banded", "striped"], half,
                                       (40, 48), "jpg", seed),
        "svhn": write_svhn(root, n, seed + 1),
        "places365": write_image_folder(root / "places365", ["airfield", "bakery"], half,
                                        (48, 64), "jpg", seed + 2),
        "lsun_crop": write_image_folder(root / "LSUN/test", None, n, (32, 32), "jpg", seed + 3),
        "lsun_resize": write_image_folder(root / "LSUN_resize/LSUN_resize", None, n, (32, 32),
                                          "jpg", seed + 4),
        "isun": write_image_folder(root / "iSUN/iSUN_patches", None, n, (32, 32), "jpeg",
                                   seed + 5),
    }


def write_openood(
    root, imglist_root, benchmark: str = "cifar10", n: int = 4, size=(32, 32), seed: int = 0
) -> Path:
    """A tiny OpenOOD v1.5 benchmark: images under ``root`` plus the image lists pytorch-ood's
    ``*_OpenOOD`` classes read from ``<imglist_root>/benchmark_imglist/<benchmark>/``.

    ``imglist_root`` is where pytorch-ood caches the lists:
    ``os.path.join(torch.hub.get_dir(), "openood_benchmark_imglist")``.
    Each list names ``n`` images (ID lists: labels cycling over the classes; OOD lists: -1).

    :param benchmark: ``"cifar10"``, ``"cifar100"`` or ``"imagenet200"``
    :return: the image-list folder of the benchmark
    """
    from pytorch_ood.benchmark import CIFAR10_OpenOOD, CIFAR100_OpenOOD, ImageNet200_OpenOOD

    cls = {"cifar10": CIFAR10_OpenOOD, "cifar100": CIFAR100_OpenOOD,
           "imagenet200": ImageNet200_OpenOOD}[benchmark]
    k = {"cifar10": 10, "cifar100": 100, "imagenet200": 200}[benchmark]
    root = Path(root)
    list_dir = Path(imglist_root) / "benchmark_imglist" / cls._subdir
    list_dir.mkdir(parents=True, exist_ok=True)
    id_lists = [cls._train_imglist, cls._val_id_imglist, cls._test_id_imglist]
    ood_lists = [cls._val_ood_imglist] + [f for _, f in cls._ood_imglists]
    from PIL import Image

    for j, fname in enumerate(id_lists + ood_lists):
        is_id = fname in id_lists
        stem = Path(fname).stem
        labels = np.arange(n) % k if is_id else np.zeros(n, dtype=np.int64)
        lines = []
        for i, arr in enumerate(fake_images(labels, tuple(size), seed * 100 + j)):
            rel = Path(stem.split("_", 1)[1]) / stem.split("_", 1)[0] / f"{i:05d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / rel)
            lines.append(f"{rel.as_posix()} {int(labels[i]) if is_id else -1}")
        write_text(list_dir / fname, "\n".join(lines) + "\n")
    return list_dir
