"""Named benchmarks: pytorch-ood ``Benchmark`` subclasses over uint8 tensor datasets.

========================= ============= ======================================================
entry point name          ID            OOD sets (``ood_names``; groups)
========================= ============= ======================================================
``digits``                digits 8x8    rotated, patches, gaussian, uniform
                                        (near: rotated; far: patches, gaussian, uniform)
``cifar10``               CIFAR-10      textures, svhn, places365, lsun_crop, lsun_resize, isun
``cifar100``              CIFAR-100     the same six (the LogitNorm paper's table)
``cifar10_openood``       CIFAR-10      OpenOOD v1.5 (near: cifar100, tin; far: mnist, svhn,
                                        textures, places365)
``cifar100_openood``      CIFAR-100     OpenOOD v1.5 (near: cifar10, tin; far: as above)
``imagenet200_openood``   ImageNet-200  OpenOOD v1.5 (near: ssb_hard, ninco; far: inaturalist,
                                        textures, openimage_o)
========================= ============= ======================================================

Every benchmark decodes its images once into :class:`~logitnorm_plugin.data.ImageTensors`
(uint8, normalised when read) and keeps them; :meth:`with_preprocessing` gives a view with
another normalisation that shares the pixels. Sets are loaded on first use; the constructor
only checks that the data is there and raises
:class:`~logitnorm_plugin._core.errors.MissingDataError` (dataset, expected path, how to get it)
when it is not, unless ``download=True``. Labels: ID class indices, OOD ``-1``.

Digits grouping: ``rotated`` is near-OOD (digit strokes, semantic shift only); natural
``patches`` and the two noise sets are far-OOD (no digit structure at all).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar, Dict, List, Sequence, Tuple

from pytorch_ood.api import BenchmarkInfo, Paper, Task
from pytorch_ood.benchmark import Benchmark
from torch.utils.data import Dataset

from logitnorm_plugin._core.errors import MissingDataError
from logitnorm_plugin.data import (
    OOD_SETS,
    PAPER_OOD,
    ImageTensors,
    OpenedDataset,
    default_root,
    load_ood,
    open_dataset,
    paper_ood_size,
    subsample_ood,
)
from logitnorm_plugin.data.cifar import _cifar_class
from logitnorm_plugin.data.images import _find_folder, decode_folder, decode_image
from logitnorm_plugin.loss import PAPER

__all__ = [
    "CIFAR10LogitNormBenchmark",
    "CIFAR100LogitNormBenchmark",
    "CIFAR10OpenOODBenchmark",
    "CIFAR100OpenOODBenchmark",
    "DigitsBenchmark",
    "ImageNet200OpenOODBenchmark",
    "LOGITNORM_PAPER",
    "OPENOOD_PAPER",
    "TensorBenchmark",
]

#: the LogitNorm paper, one record shared with the loss and the detector
LOGITNORM_PAPER = PAPER
OPENOOD_PAPER = Paper(
    title="OpenOOD v1.5: Enhanced Benchmark for Out-of-Distribution Detection",
    venue="DMLR",
    year=2024,
    url="https://arxiv.org/abs/2306.09301",
    code="https://github.com/Jingkang50/OpenOOD",
)


class TensorBenchmark(Benchmark):
    """Base of the plugin's benchmarks: ID splits and OOD sets as :class:`ImageTensors`.

    :param root: data root (default: :func:`~logitnorm_plugin.data.default_root`)
    :param download: fetch missing data (torchvision / pytorch-ood downloaders)
    :param seed: seed of generated sets (noise, patches, rotations) and of the ``val`` split
    :param mean: normalisation mean (default: the ID training statistics)
    :param std: normalisation std
    """

    #: entry-point name
    name: ClassVar[str] = ""
    #: ID dataset name
    dataset: ClassVar[str] = ""
    _ood: ClassVar[Tuple[str, ...]] = ()
    _groups: ClassVar[Dict[str, Tuple[str, ...]]] = {}

    def __init__(
        self,
        root=None,
        download: bool = False,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(kwargs)}")
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.download = bool(download)
        self.seed = int(seed)
        meta = self._meta()
        self.num_classes = int(meta["num_classes"])
        self.in_channels = int(meta["in_channels"])
        self.size = tuple(meta["size"])
        self.mean = tuple(float(v) for v in (mean if mean is not None else meta["mean"]))
        self.std = tuple(float(v) for v in (std if std is not None else meta["std"]))
        self.ood_names: List[str] = list(self._ood)
        self.ood_groups: Dict[str, List[str]] = {k: list(v) for k, v in self._groups.items()}
        self._cache: Dict[str, object] = {}
        self._check_data()

    # -- what subclasses provide ----------------------------------------------------------------

    def _opened(self) -> OpenedDataset:
        """The ID dataset, its name resolved once per benchmark object."""
        if getattr(self, "_opened_dataset", None) is None:
            self._opened_dataset = open_dataset(self.dataset)
        return self._opened_dataset

    def _meta(self) -> dict:
        return self._opened().meta

    def _check_data(self) -> None:
        """Raise MissingDataError early (without decoding) if data is missing."""

    def _load_split(self, split: str) -> ImageTensors:
        return self._opened().split(split, self.root, self.download, self.seed)

    def _load_ood(self, name: str) -> ImageTensors:
        return load_ood(name, self.root, self.download, self.size, None, None, self.seed,
                        like=self._opened())

    def _load_val_ood(self) -> ImageTensors:
        # Gaussian noise with its own seed: the paper's validation set for tuning t; never the
        # test noise images
        n = paper_ood_size(len(self.id_test_set())) or 1
        return load_ood("gaussian", None, False, self.size, None, None, self.seed + 1_000_003,
                        n=n, channels=self.in_channels, like=self._opened()).as_ood("gaussian_val")

    # -- public API -------------------------------------------------------------------------------

    @property
    def preprocessing(self) -> dict:
        """``dict(mean, std, size)`` the sets are normalised with."""
        return {"mean": self.mean, "std": self.std, "size": self.size}

    def _get(self, key: str, load) -> ImageTensors:
        if key not in self._cache:
            self._cache[key] = load()
        ds = self._cache[key]
        if isinstance(ds, ImageTensors) and (ds.mean, ds.std) != (self.mean, self.std):
            return ds.with_normalization(self.mean, self.std)
        return ds

    def with_preprocessing(self, mean: Sequence[float], std: Sequence[float]):
        """The same benchmark normalised with ``mean`` / ``std`` (pixels shared, not copied)."""
        other = copy.copy(self)
        other.mean = tuple(float(v) for v in mean)
        other.std = tuple(float(v) for v in std)
        return other  # shares self._cache: loaded sets are reused by both

    def train_set(self, split: str = "train_full") -> Dataset:
        """ID training data: ``"train_full"`` (the paper trains on all of it) or ``"train"``
        (without :meth:`val_set`, for tuning and best-checkpoint selection)."""
        if split not in ("train", "train_full"):
            raise ValueError("split must be 'train' or 'train_full'")
        return self._get(split, lambda: self._load_split(split))

    def val_set(self) -> Dataset:
        """ID validation split: a seeded stratified hold-out of ``train_full``."""
        return self._get("val", lambda: self._load_split("val"))

    def val_ood_set(self) -> Dataset:
        """OOD validation set for tuning (e.g. the LogitNorm temperature), labels ``-1``."""
        return self._get("val_ood", self._load_val_ood)

    def id_test_set(self) -> ImageTensors:
        """The ID test set (class labels)."""
        return self._get("test", lambda: self._load_split("test"))

    def ood_set(self, name: str) -> ImageTensors:
        """One OOD test set (labels ``-1``) by its name in :attr:`ood_names`."""
        if name not in self.ood_names:
            raise KeyError(f"{name!r} is not an OOD set of {self.name}: {self.ood_names}")
        return self._get(f"ood:{name}", lambda: self._load_ood(name).as_ood(name))

    def ood_sets(self) -> List[ImageTensors]:
        """All OOD test sets, in :attr:`ood_names` order."""
        return [self.ood_set(name) for name in self.ood_names]

    def test_sets(self, known: bool = True, unknown: bool = True) -> List[Dataset]:
        """pytorch-ood's interface: with ``known`` and ``unknown`` one ID + OOD set per entry of
        :attr:`ood_names`; ``unknown`` only: the OOD sets; ``known`` only: ``[ID test]``.

        :raises ValueError: if both are false
        """
        if known and unknown:
            test = self.id_test_set()
            return [test + ood for ood in self.ood_sets()]
        if known:
            return [self.id_test_set()]
        if unknown:
            return self.ood_sets()
        raise ValueError("At least one of `known` or `unknown` must be True")

    def ood_subsamples(self, repeats: int = 10, n: int | None = None) -> Dict[str, list]:
        """The paper protocol's seeded OOD subsamples: OOD name -> ``repeats`` index arrays of
        ``n`` images each (default ``len(ID test) // 5``), see
        :func:`~logitnorm_plugin.data.subsample_ood`."""
        n = n or max(1, paper_ood_size(len(self.id_test_set())))
        return {
            name: subsample_ood(len(ds), n, repeats, self.seed)
            for name, ds in zip(self.ood_names, self.ood_sets())
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, seed={self.seed}, "
            f"ood_names={self.ood_names})"
        )


class DigitsBenchmark(TensorBenchmark):
    """scikit-learn digits (1 x 8 x 8, embedded, offline) against four OOD sets.

    Near: ``rotated`` (test digits rotated by a quarter turn, zeros excluded). Far:
    ``patches`` (grey natural-image patches), ``gaussian`` and ``uniform`` noise (pure
    functions of seed and index). All on the digits' 17 grey levels. The evaluation protocol
    (MSP and friends, FPR95 at 95% ID) follows the LogitNorm paper; the data is a fast CPU
    stand-in, see :mod:`logitnorm_plugin.data.digits`.
    """

    info = BenchmarkInfo(paper=LOGITNORM_PAPER, tasks={Task.CLASSIFICATION}, ai_coded=True)
    name = "digits"
    dataset = "digits"
    _ood = ("rotated", "patches", "gaussian", "uniform")
    _groups = {"near": ("rotated",), "far": ("patches", "gaussian", "uniform")}


class _PaperCIFARBenchmark(TensorBenchmark):
    _ood = PAPER_OOD

    def _check_data(self) -> None:
        if self.download:  # fetch (and decode) everything now, not halfway through a run
            self.id_test_set()
            self.ood_sets()
            return

        folder = self.root / _cifar_class(self.dataset).base_folder
        if not folder.is_dir():
            self.id_test_set()  # raises MissingDataError with the full message
        for name in self.ood_names:
            entry = OOD_SETS[name]
            if entry.family == "svhn":
                present = (self.root / "svhn" / "test_32x32.mat").is_file()
            else:
                present = _find_folder(entry, self.root) is not None
            if not present:
                self.ood_set(name)  # raises MissingDataError naming set, path, how to get it


class CIFAR10LogitNormBenchmark(_PaperCIFARBenchmark):
    """CIFAR-10 against the LogitNorm paper's six OOD sets: Textures, SVHN, Places365,
    LSUN-Crop, LSUN-Resize, iSUN (``ood_names``: ``textures``, ``svhn``, ``places365``,
    ``lsun_crop``, ``lsun_resize``, ``isun``).

    Layout under ``root``: ``cifar-10-batches-py/``, ``dtd/images/<class>/``,
    ``svhn/test_32x32.mat``, ``places365/<class>/``, ``LSUN/`` (or ``LSUN_C/``),
    ``LSUN_resize/`` (or ``LSUN_R/``), ``iSUN/``. Textures and Places365 are resized (shorter
    side 32) and center-cropped; the others are used at their published 32 x 32. The paper
    subsamples each OOD set to ``len(ID test) / 5`` images 10 times: :meth:`ood_subsamples`.
    No near/far grouping (the paper has none).
    """

    info = BenchmarkInfo(paper=LOGITNORM_PAPER, tasks={Task.CLASSIFICATION}, ai_coded=True)
    name = "cifar10"
    dataset = "cifar10"


class CIFAR100LogitNormBenchmark(_PaperCIFARBenchmark):
    """CIFAR-100 against the LogitNorm paper's six OOD sets (see
    :class:`CIFAR10LogitNormBenchmark`; ``cifar-100-python/`` instead of the CIFAR-10 folder).
    """

    info = BenchmarkInfo(paper=LOGITNORM_PAPER, tasks={Task.CLASSIFICATION}, ai_coded=True)
    name = "cifar100"
    dataset = "cifar100"


# -- OpenOOD v1.5 ------------------------------------------------------------------------------

# pytorch-ood's OOD display names -> our stable lower-case names
_OPENOOD_NAMES = {
    "CIFAR10": "cifar10", "CIFAR100": "cifar100", "TinyImageNet": "tin", "MNIST": "mnist",
    "SVHN": "svhn", "Textures": "textures", "Places365": "places365", "SSBHard": "ssb_hard",
    "NINCO": "ninco", "iNaturalist": "inaturalist", "OpenImagesO": "openimage_o",
}
_OPENOOD_HOWTO = (
    "pass download=True (CLI: --download; needs `pip install gdown`), which runs pytorch-ood's "
    "{cls}(root, transform, download=True), or fetch them with OpenOOD's "
    "scripts/download/download.py (https://github.com/Jingkang50/OpenOOD)"
)


def _openood_sources(pood_cls) -> str:
    """``name: URL`` of the Google Drive files pytorch-ood downloads for an OpenOOD benchmark."""
    from pytorch_ood.benchmark.img import openood

    drive = "https://drive.google.com/uc?id="
    parts = [f"image lists: {drive}{openood._IMGLIST_GDRIVE_ID}"]
    for name in getattr(pood_cls, "_download_names", ()):
        gid = openood._OPENOOD_GDRIVE_IDS.get(name)
        if gid:
            parts.append(f"{name}: {drive}{gid}")
    return ", ".join(parts)


class _OpenOODBenchmark(TensorBenchmark):
    """Wraps one of pytorch-ood's ``*_OpenOOD`` benchmarks (OpenOOD v1.5 image lists).

    The images are looked up under ``<root>/<images_dir>`` (OpenOOD's own layout:
    ``images_classic`` for CIFAR, ``images_largescale`` for ImageNet), the image lists where
    pytorch-ood caches them: ``<torch.hub.get_dir()>/openood_benchmark_imglist/
    benchmark_imglist/<benchmark>/``. Images are converted to RGB (MNIST is grey), resized
    (shorter side ``resize``), center-cropped to ``size`` and decoded once.
    """

    _pood_class: ClassVar[str] = ""
    _images_dir: ClassVar[str] = "images_classic"
    _resize: ClassVar[int | None] = None

    def __init__(self, root=None, download=False, seed=0, mean=None, std=None,
                 image_net_root=None, **kwargs):
        self.image_net_root = image_net_root
        self._pood = None
        super().__init__(root, download, seed, mean, std, **kwargs)

    @classmethod
    def _pood_cls(cls):
        import pytorch_ood.benchmark as pb

        return getattr(pb, cls._pood_class)

    @property
    def images_root(self) -> Path:
        return self.root / self._images_dir

    @staticmethod
    def imglist_root() -> Path:
        import torch

        return Path(torch.hub.get_dir()) / "openood_benchmark_imglist"

    def _list_files(self) -> List[str]:
        c = self._pood_cls()
        return [c._train_imglist, c._val_id_imglist, c._test_id_imglist, c._val_ood_imglist] + [
            f for _, f in c._ood_imglists
        ]

    def _check_data(self) -> None:
        c = self._pood_cls()
        howto = _OPENOOD_HOWTO.format(cls=c.__name__)
        list_dir = self.imglist_root() / "benchmark_imglist" / c._subdir
        if self.download:
            try:
                import gdown  # noqa: F401
            except ImportError as exc:
                raise MissingDataError(
                    f"Downloading the OpenOOD benchmark '{self.name}' needs gdown: "
                    f"`pip install gdown`, or put the data in place by hand ({howto})."
                ) from exc
        else:
            missing = [f for f in self._list_files() if not (list_dir / f).is_file()]
            if missing:
                raise MissingDataError(
                    f"OpenOOD image lists for '{self.name}' not found: expected "
                    f"{', '.join(missing)} in {list_dir}. To get them, {howto}."
                )
            tops = set()
            for f in self._list_files():
                with open(list_dir / f) as fh:
                    for line in fh:
                        parts = line.split()
                        if len(parts) >= 2 and not parts[0].startswith("#"):
                            tops.add(parts[0].split("/")[0])
            tops.discard("imagenet_1k")  # ImageNet comes from image_net_root, never downloaded
            absent = sorted(t for t in tops if not (self.images_root / t).is_dir())
            if absent:
                raise MissingDataError(
                    f"OpenOOD data for '{self.name}' not found: expected "
                    f"{', '.join(str(self.images_root / t) for t in absent)}. To get it, "
                    f"{howto}."
                )
        kwargs = {}
        if self.image_net_root is not None:
            kwargs["image_net_root"] = str(self.image_net_root)
        if self.download:
            self.images_root.mkdir(parents=True, exist_ok=True)
        try:
            self._pood = c(str(self.images_root), transform=_identity, download=self.download,
                           **kwargs)
        except Exception as exc:  # gdown offline, a damaged archive, ...
            if not self.download:
                raise
            raise MissingDataError(
                f"Downloading the OpenOOD benchmark '{self.name}' failed "
                f"({type(exc).__name__}: {exc}). Its files come from Google Drive: "
                f"{_openood_sources(c)}. To get them by hand: download them where there is "
                f"network access, extract the image lists into {self.imglist_root()} (giving "
                f"{list_dir}/) and each dataset archive into {self.images_root}/<name>/, or "
                f"use OpenOOD's scripts/download/download.py; then run again."
            ) from exc
        self.ood_names = [_OPENOOD_NAMES.get(n, n.lower()) for n in self._pood.ood_names]
        self.ood_groups = {
            "near": [_OPENOOD_NAMES.get(n, n.lower()) for n in c._near_ood],
            "far": [_OPENOOD_NAMES.get(n, n.lower()) for n in c._far_ood],
        }

    def _decode(self, ds, key: str, ood: bool) -> ImageTensors:
        import torch


        files = [Path(f) for f in ds.files]
        images = decode_folder(
            self.images_root, self.size, "resize_crop", 3, cache_root=self.root, files=files,
            resize=self._resize, cache_name=f"openood-{self.name}-{key}",
        )
        labels = torch.full((len(files),), -1) if ood else torch.as_tensor(ds.labels)
        meta = self._meta()
        return ImageTensors(images, labels, meta["mean"], meta["std"], key)

    def _load_split(self, split: str) -> ImageTensors:
        if split in ("train", "train_full"):
            # OpenOOD trains on its whole training list and selects on its own val list
            return self._decode(self._pood.train_in, self.dataset, False)
        if split == "val":
            return self._decode(self._pood.val_in, self.dataset, False)
        return self._decode(self._pood.test_in, self.dataset, False)

    def _load_ood(self, name: str) -> ImageTensors:
        i = self.ood_names.index(name)
        return self._decode(self._pood.test_oods[i], name, True)

    def _load_val_ood(self) -> ImageTensors:
        return self._decode(self._pood.val_ood, "val_ood", True)


def _identity(x):
    return x


class CIFAR10OpenOODBenchmark(_OpenOODBenchmark):
    """OpenOOD v1.5 CIFAR-10 (wraps ``pytorch_ood.benchmark.CIFAR10_OpenOOD``): near-OOD
    ``cifar100``, ``tin``; far-OOD ``mnist``, ``svhn``, ``textures``, ``places365``. Train,
    val (OpenOOD's held-out ID list) and test follow OpenOOD's image lists exactly;
    :meth:`val_ood_set` is OpenOOD's TinyImageNet validation list."""

    info = BenchmarkInfo(paper=OPENOOD_PAPER, tasks={Task.CLASSIFICATION}, ai_coded=True)
    name = "cifar10_openood"
    dataset = "cifar10"
    _pood_class = "CIFAR10_OpenOOD"
    _ood = ("cifar100", "tin", "mnist", "svhn", "textures", "places365")
    _groups = {"near": ("cifar100", "tin"), "far": ("mnist", "svhn", "textures", "places365")}


class CIFAR100OpenOODBenchmark(_OpenOODBenchmark):
    """OpenOOD v1.5 CIFAR-100 (wraps ``pytorch_ood.benchmark.CIFAR100_OpenOOD``): near-OOD
    ``cifar10``, ``tin``; far-OOD ``mnist``, ``svhn``, ``textures``, ``places365``."""

    info = BenchmarkInfo(paper=OPENOOD_PAPER, tasks={Task.CLASSIFICATION}, ai_coded=True)
    name = "cifar100_openood"
    dataset = "cifar100"
    _pood_class = "CIFAR100_OpenOOD"
    _ood = ("cifar10", "tin", "mnist", "svhn", "textures", "places365")
    _groups = {"near": ("cifar10", "tin"), "far": ("mnist", "svhn", "textures", "places365")}


class ImageNet200OpenOODBenchmark(_OpenOODBenchmark):
    """OpenOOD v1.5 ImageNet-200 (wraps ``pytorch_ood.benchmark.ImageNet200_OpenOOD``):
    near-OOD ``ssb_hard``, ``ninco``; far-OOD ``inaturalist``, ``textures``, ``openimage_o``.

    Images: ``<root>/images_largescale`` (OpenOOD's layout); ImageNet-1K itself is never
    downloaded: pass ``image_net_root`` (torchvision layout) or have
    ``images_largescale/imagenet_1k`` in place. Test preprocessing as OpenOOD: resize to 256,
    center crop 224, ImageNet mean/std. Decoded 224 x 224 sets take 150 KB per image
    (about 1.4 GB for the ID test set, 7.4 GB for SSB-hard): use :meth:`ood_set` one at a time
    where memory is short. :meth:`train_set` is not decoded into memory (about 39 GB): it is
    a lazy dataset with the same preprocessing.
    """

    info = BenchmarkInfo(paper=OPENOOD_PAPER, tasks={Task.CLASSIFICATION}, ai_coded=True)
    name = "imagenet200_openood"
    dataset = "imagenet200"
    _pood_class = "ImageNet200_OpenOOD"
    _images_dir = "images_largescale"
    _resize = 256
    _ood = ("ssb_hard", "ninco", "inaturalist", "textures", "openimage_o")
    _groups = {"near": ("ssb_hard", "ninco"), "far": ("inaturalist", "textures", "openimage_o")}

    def _meta(self) -> dict:
        return {
            "num_classes": 200, "in_channels": 3, "size": (224, 224),
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
        }

    def train_set(self, split: str = "train_full") -> Dataset:
        if split not in ("train", "train_full"):
            raise ValueError("split must be 'train' or 'train_full'")
        return _LazyImageList(self._pood.train_in, self.size, self._resize, self.mean, self.std)


class _LazyImageList(Dataset):
    """Images of an image list decoded on access (for sets too large to hold decoded)."""

    def __init__(self, ds, size, resize, mean, std):
        import torch

        self.files, self.labels = list(ds.files), list(ds.labels)
        self.size, self.resize = tuple(size), resize
        self._norm = ImageTensors(torch.empty((0, 3, *self.size), dtype=torch.uint8),
                                  torch.empty(0, dtype=torch.int64), mean, std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        import torch


        arr = decode_image(Path(self.files[index]), self.size, "resize_crop", 3, self.resize)
        x = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        return self._norm.normalize(x), int(self.labels[index])

