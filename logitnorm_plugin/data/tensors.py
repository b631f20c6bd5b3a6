"""Image sets held as one uint8 tensor: decode once, then everything is tensor indexing."""

from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

__all__ = ["ImageTensors"]


def _as_tuple(values, channels: int, what: str) -> Tuple[float, ...]:
    values = tuple(float(v) for v in (values if isinstance(values, Sequence) else [values]))
    if len(values) == 1 and channels > 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{what} has {len(values)} entries, the images have {channels} channels")
    return values


class ImageTensors(Dataset):
    """A labelled image set as a ``N x C x H x W`` uint8 tensor plus ``N`` int64 labels.

    Pixels are stored as decoded (uint8), so the set costs one byte per pixel and can sit on the
    GPU whole. Normalisation happens when items or batches are read: a pixel ``p`` becomes
    ``(p / 255 - mean[c]) / std[c]`` as float32, the same arithmetic as torchvision's
    ``ToTensor()`` followed by ``Normalize(mean, std)``, so the values equal those of the
    usual PIL pipeline (up to float rounding of the two divisions).

    Two ways to read it, with identical values:

    - as a ``torch.utils.data.Dataset`` (``ds[i] -> (C x H x W float32, int label)``), for
      DataLoaders and code that expects one;
    - :meth:`batches`, which slices the tensor directly on the target device: no workers, no
      collation, no per-item Python, the fast path for evaluation and training.

    Labels ``< 0`` mark OOD samples (pytorch-ood's convention); :meth:`as_ood` relabels a set.

    :param images: ``N x C x H x W`` uint8 tensor
    :param labels: ``N`` integer tensor (stored as int64)
    :param mean: per-channel mean of pixels in ``[0, 1]`` (a scalar is repeated over channels)
    :param std: per-channel standard deviation of pixels in ``[0, 1]``
    :param name: the dataset name, used in results tables
    :param classes: optional class names, index = label
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        name: str = "",
        classes: Sequence[str] | None = None,
    ):
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError("images must be a N x C x H x W torch.uint8 tensor")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError("labels must be integers")
        self.images = images
        self.labels = labels.to(device=images.device, dtype=torch.int64)
        channels = images.shape[1]
        self.mean = _as_tuple(mean, channels, "mean")
        self.std = _as_tuple(std, channels, "std")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        self.name = str(name)
        self.classes = list(classes) if classes is not None else None
        self._stats = {}

    # -- basic protocol -----------------------------------------------------------------------

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        return self.normalize(self.images[index]), int(self.labels[index])

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return (
            f"ImageTensors(name={self.name!r}, n={n}, shape={c}x{h}x{w}, "
            f"device={self.images.device}, mean={self.mean}, std={self.std})"
        )

    def __add__(self, other):
        """Concatenation: an :class:`ImageTensors` if ``other`` is one (same shape and
        preprocessing required), else a ``ConcatDataset``."""
        if isinstance(other, ImageTensors):
            return ImageTensors.concat([self, other])
        return ConcatDataset([self, other])

    # -- properties ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    @property
    def preprocessing(self) -> dict:
        """``dict(mean=..., std=..., size=(H, W))``: what a model trained on this set expects."""
        return {"mean": self.mean, "std": self.std, "size": tuple(self.images.shape[2:])}

    # -- normalisation ------------------------------------------------------------------------

    def _mean_std(self, device, dims: int) -> Tuple[Tensor, Tensor]:
        key = (str(device), dims)
        if key not in self._stats:
            shape = (-1,) + (1,) * (dims - 1)
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(shape)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(shape)
            self._stats[key] = (mean, std)
        return self._stats[key]

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 pixels (``C x H x W`` or ``B x C x H x W``) -> normalised float32, same device.

        :param x: uint8 tensor with the channels of this set
        :return: ``(x / 255 - mean) / std`` as float32
        """
        if x.dtype != torch.uint8:
            raise TypeError(f"normalize expects uint8 pixels, got {x.dtype}")
        mean, std = self._mean_std(x.device, 3)
        return x.to(torch.float32).div_(255.0).sub_(mean).div_(std)

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> ImageTensors:
        """The same images and labels (shared, not copied) with another normalisation.

        For models trained with other statistics, e.g. the LogitNorm code's CIFAR numbers.
        """
        return ImageTensors(self.images, self.labels, mean, std, self.name, self.classes)

    # -- derived sets -------------------------------------------------------------------------

    def to(self, device) -> ImageTensors:
        """A copy on ``device`` (images stay uint8); ``self`` if already there."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        return ImageTensors(
            self.images.to(device), self.labels.to(device), self.mean, self.std, self.name,
            self.classes,
        )

    def as_ood(self, name: str | None = None) -> ImageTensors:
        """The same images with every label ``-1`` (OOD in pytorch-ood's convention)."""
        labels = torch.full_like(self.labels, -1)
        return ImageTensors(self.images, labels, self.mean, self.std, name or self.name)

    def subset(self, indices, name: str | None = None) -> ImageTensors:
        """The images at ``indices`` (a copy, in that order)."""
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.images.device)
        return ImageTensors(
            self.images[idx], self.labels[idx], self.mean, self.std, name or self.name,
            self.classes,
        )

    @staticmethod
    def concat(parts: Sequence[ImageTensors], name: str | None = None) -> ImageTensors:
        """Concatenate sets with equal image shape, normalisation and device.

        :raises ValueError: if shapes or preprocessing differ
        """
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if p.shape != first.shape or p.mean != first.mean or p.std != first.std:
                raise ValueError(
                    f"cannot concatenate {p!r} with {first!r}: shape or normalisation differ"
                )
        return ImageTensors(
            torch.cat([p.images for p in parts]),
            torch.cat([p.labels for p in parts]),
            first.mean,
            first.std,
            name or "+".join(p.name for p in parts),
        )

    # -- the fast path ------------------------------------------------------------------------

    def batches(
        self,
        batch_size: int,
        device=None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[Tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches, normalised, on ``device``, without a DataLoader.

        ``x`` is ``B x C x H x W`` float32 and ``y`` is ``B`` int64; values equal those of a
        DataLoader over this dataset with the same order. Put the set on the device first
        (:meth:`to`) to avoid a host-to-device copy per batch; otherwise each uint8 batch is
        copied (4x less traffic than copying floats).

        :param batch_size: images per batch
        :param device: where the batches go; default: where the images are
        :param shuffle: random order (a fresh permutation per call)
        :param generator: CPU ``torch.Generator`` for the permutation, for reproducible order
        :param drop_last: drop a last incomplete batch
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = self.images.device if device is None else torch.device(device)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        if order is not None:
            order = order.to(self.images.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            if order is None:
                x, y = self.images[start:end], self.labels[start:end]
            else:
                idx = order[start:end]
                x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            if x.device != device:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
            yield self.normalize(x), y
