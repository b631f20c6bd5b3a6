"""Training augmentation on the device: random crop with zero padding and horizontal flip.

The CIFAR recipes augment every image with ``RandomCrop(32, padding=4)`` and
``RandomHorizontalFlip()``. Done per image in Python on CPU workers, that keeps a modern GPU
waiting; here the whole batch is augmented with a handful of tensor operations where the batch
already is, with no host synchronisation, so a training step stays capturable in a CUDA graph.

Semantics per image, as torchvision's transforms on a PIL image: pad every side with
``padding`` zero pixels (black, before normalisation), take an ``H x W`` window at an offset
drawn uniformly from ``{0, ..., 2 * padding}`` in each direction, and mirror it left-right with
probability 1/2. Crop-then-flip and flip-then-crop give the same distribution because the
offsets are symmetric.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["random_crop_flip", "DeviceAugment", "in_memory_format"]


def random_crop_flip(
    images: Tensor,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """Randomly crop (after zero padding) and flip each image of a batch independently.

    :param images: ``B x C x H x W`` tensor of any dtype (uint8 pixels are the cheap choice:
        augment before normalising, so the padding is black as in torchvision)
    :param padding: zero pixels added on each side before cropping; 0 disables the crop
    :param flip: mirror each image left-right with probability 1/2
    :param generator: source of randomness, on the device of ``images`` (reproducible runs)
    :param memory_format: layout of the result; ``torch.channels_last`` costs no extra copy
        (the gather produces that layout)
    :return: ``B x C x H x W`` tensor of the same dtype and device (a new tensor)
    """
    if images.dim() != 4:
        raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 and not flip:
        return images.clone(memory_format=memory_format)
    b, _, h, w = images.shape
    device = images.device
    if padding > 0:
        source = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b, 1), device=device, generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b, 1), device=device, generator=generator)
    else:
        source = images
        dy = torch.zeros((b, 1), dtype=torch.int64, device=device)
        dx = dy
    rows = dy + torch.arange(h, device=device)  # B x H
    cols = torch.arange(w, device=device).expand(b, w)
    if flip:
        mirrored = torch.rand((b, 1), device=device, generator=generator) < 0.5
        cols = torch.where(mirrored, (w - 1) - cols, cols)
    cols = dx + cols  # B x W
    batch = torch.arange(b, device=device).view(b, 1, 1)
    # advanced indices on dims 0, 2, 3 around a slice: the result is B x H x W x C
    out = source[batch, :, rows.view(b, h, 1), cols.view(b, 1, w)]
    return in_memory_format(out.permute(0, 3, 1, 2), memory_format)


def in_memory_format(x: Tensor, memory_format: torch.memory_format) -> Tensor:
    """``x`` with exactly the strides of ``memory_format`` (a copy only where they differ).

    ``Tensor.contiguous`` keeps a tensor whose size-1 dimensions carry other strides: a
    one-channel ``B x 1 x H x W`` batch permuted from ``B x H x W x 1`` counts as contiguous
    *and* channels_last. Convolutions then pick channels_last kernels, the weight gradient of
    the first layer comes out channels_last while its parameter is not, and DDP warns on every
    step ("Grad strides do not match bucket view strides") and copies the gradient.
    """
    x = x.contiguous(memory_format=memory_format)
    wanted = torch.empty(x.shape, device="meta", memory_format=memory_format).stride()
    return x if x.stride() == wanted else x.clone(memory_format=memory_format)


class DeviceAugment:
    """The augmentation of a recipe, bound to its own seeded generator.

    :param padding: zero padding of the random crop (0: no crop)
    :param flip: random horizontal flip
    :param device: where the batches and the generator live
    :param seed: seed of the generator
    :param memory_format: layout of the augmented batches
    """

    def __init__(
        self,
        padding: int = 4,
        flip: bool = True,
        device="cpu",
        seed: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.padding = int(padding)
        self.flip = bool(flip)
        self.memory_format = memory_format
        self.generator = torch.Generator(device=torch.device(device))
        self.generator.manual_seed(int(seed))

    @property
    def active(self) -> bool:
        """Whether the augmentation changes anything."""
        return self.padding > 0 or self.flip

    def __call__(self, images: Tensor) -> Tensor:
        """:param images: ``B x C x H x W``; :return: the augmented batch (same dtype)"""
        if not self.active:
            return in_memory_format(images, self.memory_format)
        return random_crop_flip(
            images, self.padding, self.flip, self.generator, self.memory_format
        )

    def get_state(self) -> Tensor:
        """The generator state (a CPU uint8 tensor, safe for ``torch.load(weights_only=True)``)."""
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def __repr__(self) -> str:
        return f"DeviceAugment(padding={self.padding}, flip={self.flip})"
