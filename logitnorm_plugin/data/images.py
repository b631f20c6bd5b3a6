"""Image folders decoded once into uint8 tensors (with an on-disk cache of the decoded set).

Reading: every image file under a folder, at any depth, in sorted path order (so both flat
folders and ImageFolder trees work: ``LSUN/test/*.jpg``, ``dtd/images/<class>/*.jpg``).
Each is converted to RGB (or L), brought to the target size and stacked into one
``N x C x H x W`` uint8 tensor.

Resizing follows the LogitNorm / Outlier Exposure evaluation code: ``"resize_crop"`` is
torchvision's ``Resize(min(size))`` (shorter side, bilinear with antialiasing) followed by
``CenterCrop(size)``; ``"as_is"`` keeps images that already have the target size untouched
(LSUN-Crop, LSUN-Resize and iSUN are published at 32 x 32) and resizes + crops any other.

A dataset folder holds its images itself: links inside it are never followed, neither out
of the folder nor back into it (a link loop would otherwise multiply the test set), and one
image reached twice (a hard link, a copy under a link) is never counted twice; either is an
:class:`~logitnorm_plugin._core.errors.UntrustedFileError` naming the link or both names, and
saying what to do (copy the images in with ``cp -rL``, or point at the real folder). The
dataset folder itself may be a link (a dataset kept on another disk).

A file that PIL cannot decode (truncated, damaged, not an image) raises
:class:`~logitnorm_plugin._core.errors.CorruptDataError` naming the file and saying to remove or
replace it, instead of PIL's own error, which names no file.

Cache: the decoded tensor is stored (atomically) under ``<data root>/.logitnorm_decoded/``,
keyed by the folder, the target size and a fingerprint of the file list (relative paths,
sizes, modification times), so a changed folder is decoded again. It lives beside, never
inside, the dataset folders, because torchvision's ``ImageFolder`` would take a hidden
folder inside for a class.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch

from logitnorm_plugin._core import regular_files
from logitnorm_plugin._core.atomic import torch_save
from logitnorm_plugin._core.digests import parts_sha256
from logitnorm_plugin._core.errors import CorruptDataError, MissingDataError, UntrustedFileError
from logitnorm_plugin.data.tensors import ImageTensors

__all__ = [
    "IMAGE_EXTENSIONS",
    "decode_folder",
    "decode_image",
    "folder_dataset_meta",
    "list_images",
    "load_folder_dataset",
    "load_ood_folder",
    "resize_tensors",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff",
                    ".webp")
CACHE_DIR = ".logitnorm_decoded"
_CACHE_VERSION = 1


def _linked(link: Path) -> UntrustedFileError:
    return UntrustedFileError(
        f"the dataset folder holds a link, {str(link)!r} (to {os.readlink(link)!r}): links "
        "inside a dataset are not followed (out of it, or back into it in a loop); copy the "
        "images in (`cp -rL`) or point at the real folder"
    )


def unique_files(files: Sequence[Path]) -> List[Path]:
    """``files`` as given, after checking that each is a regular file (not a FIFO, a device,
    a link) and that no image is among them twice (the same file under two names: a hard link).

    :raises UntrustedFileError: naming both names
    :raises regular_files.NotRegularFileError: naming the file that is not a regular file
    """
    seen: dict = {}
    for path in files:
        # a FIFO named like an image would block the decoder forever
        regular_files.check_name(path, "image", "remove it from the dataset folder")
        st = os.stat(path, follow_symlinks=False)
        first = seen.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            raise UntrustedFileError(
                f"the dataset holds one image twice, as {str(first)!r} and {str(path)!r} (the "
                "same file under two names): it would be counted twice; remove one of them"
            )
    return list(files)


def list_images(folder: Path) -> List[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted; links inside
    ``folder`` are not followed and each file is listed once (see the module's doc).

    :raises UntrustedFileError: a link inside the folder, or one image under two names
    """
    folder = Path(folder)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):  # never followlinks: see above
        for name in dirnames + filenames:
            if not name.startswith(".") and os.path.islink(os.path.join(dirpath, name)):
                raise _linked(Path(dirpath) / name)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / f)
    return unique_files(sorted(found))


def _corrupt(path: Path, exc: BaseException) -> CorruptDataError:
    return CorruptDataError(
        f"Cannot decode the image {path} ({type(exc).__name__}: {exc}): the file is truncated, "
        f"damaged or not an image. Remove it, or replace it with a good copy (e.g. extract the "
        f"dataset's archive again), then run again."
    )


def _open_decoded(path: Path, mode: str):
    """The image at ``path``, fully decoded and converted to ``mode`` (``"RGB"`` or ``"L"``).

    :raises CorruptDataError: for any decoding error of PIL (they name no file), never for
        a missing file or a lack of memory
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert(mode)  # convert() decodes every pixel: errors surface here
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise _corrupt(path, exc) from exc


def decode_image(
    path: Path,
    size: Tuple[int, int],
    mode: str = "resize_crop",
    channels: int = 3,
    resize: int | None = None,
) -> np.ndarray:
    """One image file -> ``H x W x C`` uint8 array of the target size (see module doc).

    :param resize: shorter side before the center crop (default ``min(size)``; OpenOOD's
        ImageNet protocol uses 256 for a 224 crop)
    :raises CorruptDataError: if the file cannot be decoded (names the file)
    """
    import torchvision.transforms.functional as TF

    if mode not in ("resize_crop", "as_is"):
        raise ValueError(f"unknown preprocessing {mode!r}")
    img = _open_decoded(path, "RGB" if channels == 3 else "L")
    if mode == "resize_crop" or img.size != (size[1], size[0]):
        img = TF.center_crop(TF.resize(img, resize or min(size)), list(size))
    arr = np.array(img, dtype=np.uint8)  # writable: torch.from_numpy warns on read-only
    return arr if arr.ndim == 3 else arr[:, :, None]


def _fingerprint(folder: Path, files: Sequence[Path], size, mode, channels) -> str:
    head = f"v{_CACHE_VERSION}|{folder.resolve()}|{size}|{mode}|{channels}"
    stats = ((f.relative_to(folder), f.stat()) for f in files)
    parts = (f"|{rel}|{st.st_size}|{st.st_mtime_ns}" for rel, st in stats)
    return parts_sha256([head, *parts])[:20]


def decode_folder(
    folder: Path,
    size: Tuple[int, int],
    mode: str = "resize_crop",
    channels: int = 3,
    cache_root: Path | None = None,
    files: Sequence[Path] | None = None,
    workers: int | None = None,
    resize: int | None = None,
    cache_name: str | None = None,
) -> torch.Tensor:
    """Decode every image of ``folder`` into one ``N x C x H x W`` uint8 tensor.

    :param folder: the image folder
    :param size: target ``(H, W)``
    :param mode: ``"resize_crop"`` or ``"as_is"``
    :param channels: 3 (RGB) or 1 (grey)
    :param cache_root: where ``.logitnorm_decoded/`` goes; ``None``: no cache
    :param files: the files (default: :func:`list_images`)
    :param workers: decoding threads (PIL releases the GIL while decoding)
    :param resize: shorter side before the center crop, see :func:`decode_image`
    :param cache_name: file-name prefix of the cache entry (default: the folder name)
    """
    folder = Path(folder)
    files = list_images(folder) if files is None else list(files)
    size = (int(size[0]), int(size[1]))
    cache_file = None
    if cache_root is not None and files:
        key = _fingerprint(folder, files, (size, resize), mode, channels)
        prefix = cache_name or folder.name
        cache_file = Path(cache_root) / CACHE_DIR / f"{prefix}-{size[0]}x{size[1]}-{key}.pt"
        if cache_file.is_file():
            try:
                cached = torch.load(cache_file, weights_only=True)
                if cached.shape == (len(files), channels, *size):
                    return cached
            except Exception:  # a broken cache file is just decoded again
                pass
    workers = workers or min(8, os.cpu_count() or 1)
    out = np.empty((len(files), size[0], size[1], channels), dtype=np.uint8)

    def work(i):
        out[i] = decode_image(files[i], size, mode, channels, resize)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(files))))
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    if cache_file is not None:

        try:
            torch_save(images, cache_file)
        except OSError:  # a read-only data root only costs the next run a decode
            pass
    return images


def resize_tensors(ds: ImageTensors, size: Tuple[int, int]) -> ImageTensors:
    """Resize (shorter side, bilinear, antialiased) and center-crop every image to ``size``."""
    import torchvision.transforms.functional as TF

    size = (int(size[0]), int(size[1]))
    x = TF.resize(ds.images, min(size), antialias=True)
    x = TF.center_crop(x, list(size))
    return ImageTensors(x.contiguous(), ds.labels, ds.mean, ds.std, ds.name, ds.classes)


# -- ImageFolder ID datasets ----------------------------------------------------------------


def _refuse_links(*paths: Path) -> None:
    """:raises UntrustedFileError: for the first of ``paths`` or of their entries that is a
    link (the split and class folders of an ImageFolder dataset)"""
    for path in paths:
        entries = sorted(path.iterdir()) if path.is_dir() and not path.is_symlink() else []
        for entry in (path, *entries):
            if entry.is_symlink() and not entry.name.startswith("."):
                raise _linked(entry)


def _classes(split_dir: Path) -> List[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _first_image_size(files: Sequence[Path]) -> Tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(files[0]) as img:
            return img.size[1], img.size[0]
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as exc:  # an unreadable header: PIL's error names no file
        raise _corrupt(files[0], exc) from exc


def load_folder_dataset(
    path: Path,
    split: str,
    size: Tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageTensors:
    """An ID dataset from ``<path>/<split>/<class>/*`` (``split``: ``train`` or ``test``).

    Classes are the sorted folder names of ``train`` (as torchvision's ``ImageFolder``); the
    image size defaults to that of the first training image. Normalisation defaults to the
    statistics of the training images.

    :raises MissingDataError: if the split folder is missing or holds no images
    :raises CorruptDataError: if an image cannot be decoded (names the file)
    """
    path = Path(path)
    split_dir = path / split
    train_dir = path / "train"
    if not split_dir.is_dir() or not train_dir.is_dir():
        raise MissingDataError(
            f"Image-folder dataset {str(path)!r}: expected {train_dir}/<class>/* and "
            f"{path / 'test'}/<class>/* (torchvision ImageFolder layout)."
        )
    _refuse_links(train_dir, split_dir)
    classes = _classes(train_dir)
    if not classes:
        raise MissingDataError(f"No class folders under {train_dir}")
    files, labels = [], []
    for label, cls in enumerate(classes):
        cls_files = list_images(split_dir / cls) if (split_dir / cls).is_dir() else []
        files += cls_files
        labels += [label] * len(cls_files)
    if not files:
        raise MissingDataError(f"No images under {split_dir}/<class>/ for classes {classes}")
    unique_files(files)  # one image in two classes
    if size is None:
        size = _first_image_size(list_images(train_dir / classes[0]) or files)
    images = decode_folder(split_dir, size, "as_is", 3, cache_root=path, files=files)
    if mean is None or std is None:
        meta = folder_dataset_meta(path, size)
        mean, std = meta["mean"], meta["std"]
    return ImageTensors(images, torch.tensor(labels), mean, std, path.name, classes)


def folder_dataset_meta(path: Path, size: Tuple[int, int] | None = None) -> dict:
    """``dataset_meta`` of an image-folder dataset: statistics of its training images."""
    path = Path(path)
    train = load_folder_dataset(path, "train", size=size, mean=(0.0,) * 3, std=(1.0,) * 3)
    return training_statistics(train)


def training_statistics(train: ImageTensors) -> dict:
    """``dataset_meta`` of an image-folder dataset from its decoded training images."""
    x = train.images.to(torch.float64) / 255
    return {
        "num_classes": len(train.classes),
        "in_channels": 3,
        "size": tuple(train.images.shape[2:]),
        "mean": tuple(round(v, 5) for v in x.mean(dim=(0, 2, 3)).tolist()),
        "std": tuple(round(v, 5) for v in x.std(dim=(0, 2, 3)).tolist()),
    }


# -- OOD image folders ----------------------------------------------------------------------


def _find_folder(entry, root: Path) -> Path | None:
    for rel in entry.folders:
        folder = root / rel
        if folder.is_dir() and list_images(folder):
            return folder
    return None


_ISUN_URL = "https://www.dropbox.com/s/raw/ssz7qxfqae0cca5/iSUN.tar.gz"


def _pood_class(name: str):
    """pytorch-ood's dataset class that downloads the OOD image set ``name``."""
    from pytorch_ood.dataset import img

    return {"textures": img.Textures, "lsun_crop": img.LSUNCrop,
            "lsun_resize": img.LSUNResize, "places365": img.Places365}[name]


def download_url(entry) -> str:
    """The address an OOD image set is downloaded from (a Google Drive file for Places365)."""
    if entry.name == "isun":
        return _ISUN_URL
    cls = _pood_class(entry.name)
    return cls.url or f"https://drive.google.com/uc?id={cls.gdrive_id}"


def _download(entry, root: Path) -> None:
    """Fetch an OOD set with pytorch-ood's / torchvision's downloaders (never in tests)."""
    root.mkdir(parents=True, exist_ok=True)
    if entry.name == "isun":
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(
            _ISUN_URL, str(root), filename="iSUN.tar.gz", md5="be77b0f2c26fda898afac5f99645ee70",
        )
    elif entry.name in ("textures", "lsun_crop", "lsun_resize", "places365"):
        _pood_class(entry.name)(str(root), download=True)
    else:  # pragma: no cover - every image entry is handled above
        raise MissingDataError(f"No downloader for {entry.name!r}: {entry.how_to_get}")


def load_ood_folder(
    entry,
    root: Path,
    download: bool = False,
    size: Tuple[int, int] = (32, 32),
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> ImageTensors:
    """An OOD image folder (an :class:`~logitnorm_plugin.data.OODEntry`) as uint8 tensors.

    :raises MissingDataError: names the set, the expected folder and how to get it; when a
        download was asked for and failed, the URL and where to extract it by hand
    """
    root = Path(root)
    folder = _find_folder(entry, root)
    if folder is None and download:
        try:
            _download(entry, root)
        except Exception as exc:  # no network, no gdown, a bad MD5, gdown's own errors, ...
            raise MissingDataError(
                f"Downloading OOD set '{entry.name}' from {download_url(entry)} into {root} "
                f"failed ({type(exc).__name__}: {exc}). To get it by hand: download that file "
                f"where there is network access and extract it into {root}, so that its images "
                f"are under {root / entry.folders[0]}; then run again."
            ) from exc
        folder = _find_folder(entry, root)
    if folder is None:
        expected = " or ".join(str(root / rel) for rel in entry.folders)
        raise MissingDataError(
            f"OOD set '{entry.name}' not found: expected images under {expected}. "
            f"To get it, pass download=True (CLI: --download) or use {entry.how_to_get}."
        )
    images = decode_folder(folder, size, entry.preprocess, 3, cache_root=root)
    labels = torch.full((images.shape[0],), -1, dtype=torch.int64)
    return ImageTensors(images, labels, mean, std, entry.name)
