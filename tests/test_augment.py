"""On-device crop + flip: same semantics as torchvision's RandomCrop(padding) + flip."""

import pytest
import torch
import torchvision.transforms.functional as TF

from logitnorm_plugin.training.augment import DeviceAugment, random_crop_flip


def _images(b=16, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def _candidates(img, padding):
    """Every (dy, dx, flipped) -> the torchvision result for one image."""
    c, h, w = img.shape
    padded = TF.pad(img, [padding] * 4, fill=0)
    out = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = TF.crop(padded, dy, dx, h, w)
            out[(dy, dx, False)] = crop
            out[(dy, dx, True)] = TF.hflip(crop)
    return out


def test_each_output_is_a_torchvision_crop_and_flip():
    images = _images()
    g = torch.Generator().manual_seed(1)
    out = random_crop_flip(images, padding=2, flip=True, generator=g)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for img, aug in zip(images, out):
        matches = [k for k, v in _candidates(img, 2).items() if torch.equal(v, aug)]
        assert matches, "augmented image is not a padded crop (+ flip) of its source"


def test_offsets_and_flips_cover_the_whole_range():
    images = _images(b=1).expand(4000, -1, -1, -1).contiguous()
    g = torch.Generator().manual_seed(2)
    out = random_crop_flip(images, padding=1, flip=True, generator=g)
    cands = _candidates(images[0], 1)
    seen = {}
    for aug in out:
        key = next(k for k, v in cands.items() if torch.equal(v, aug))
        seen[key] = seen.get(key, 0) + 1
    # 3 x 3 offsets x 2 flips, each about 4000 / 18 = 222 times
    assert len(seen) == 18
    assert min(seen.values()) > 150 and max(seen.values()) < 300
    flipped = sum(v for k, v in seen.items() if k[2])
    assert 1800 < flipped < 2200


def test_padding_is_black_before_normalisation():
    images = torch.full((64, 1, 4, 4), 200, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, padding=4, flip=False, generator=g)
    values = set(out.unique().tolist())
    assert values == {0, 200}


def test_seeded_generator_reproduces_and_different_seeds_differ():
    images = _images(b=64)
    a = DeviceAugment(4, True, seed=5)(images)
    b = DeviceAugment(4, True, seed=5)(images)
    c = DeviceAugment(4, True, seed=6)(images)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_state_round_trip_continues_the_stream():
    images = _images(b=32)
    aug = DeviceAugment(2, True, seed=3)
    aug(images)
    state = aug.get_state()
    expected = aug(images)
    other = DeviceAugment(2, True, seed=99)
    other.set_state(state)
    assert torch.equal(other(images), expected)


def test_no_flip_no_crop_is_identity_and_flip_only_mirrors():
    images = _images()
    assert torch.equal(DeviceAugment(0, False)(images), images)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, padding=0, flip=True, generator=g)
    for img, aug in zip(images, out):
        assert torch.equal(aug, img) or torch.equal(aug, img.flip(-1))


def test_channels_last_layout_and_float_input():
    images = _images().float()
    out = random_crop_flip(images, 4, True, torch.Generator().manual_seed(0), torch.channels_last)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_bad_arguments():
    with pytest.raises(ValueError, match="B x C x H x W"):
        random_crop_flip(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(_images(), padding=-1)
