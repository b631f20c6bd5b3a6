"""Datasets: ImageTensors, digits splits and OOD sets, noise determinism, CIFAR/SVHN/folder
readers on tiny real-format fixtures, MissingDataError messages."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from logitnorm_plugin._core.errors import MissingDataError, UnknownNameError
from logitnorm_plugin.data import (
    DATASETS,
    OOD_SETS,
    PAPER_OOD,
    SPLITS,
    ImageTensors,
    dataset_meta,
    load_ood,
    load_split,
    paper_ood_size,
    stratified_holdout,
    subsample_ood,
)
from logitnorm_plugin.data.digits import (
    DIGITS_MEAN,
    DIGITS_OOD,
    DIGITS_STD,
    digits_arrays,
    digits_split_indices,
)
from logitnorm_plugin.data.noise import NoiseDataset, noise_image

DIGIT_LEVELS = {round(k * 255 / 16) for k in range(17)}


def _small_set(n=10, c=3, h=4, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 3
    return ImageTensors(images, labels, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), "toy")


# -- ImageTensors -----------------------------------------------------------------------------


def test_item_is_totensor_plus_normalize():
    import torchvision.transforms.functional as TF
    from PIL import Image

    ds = _small_set()
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (3, 4, 5) and isinstance(y, int)
    pil = Image.fromarray(ds.images[3].permute(1, 2, 0).numpy())
    ref = TF.normalize(TF.to_tensor(pil), ds.mean, ds.std)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)


def test_batches_equal_dataloader():
    ds = _small_set(n=23)
    fast = list(ds.batches(4))
    slow = list(DataLoader(ds, batch_size=4))
    assert len(fast) == len(slow) == 6
    for (xa, ya), (xb, yb) in zip(fast, slow):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert [len(y) for _, y in ds.batches(4, drop_last=True)] == [4] * 5


def test_shuffled_batches_follow_the_generator():
    ds = _small_set(n=23)
    order = torch.randperm(23, generator=torch.Generator().manual_seed(5))
    fast = list(ds.batches(4, shuffle=True, generator=torch.Generator().manual_seed(5)))
    x = torch.cat([b[0] for b in fast])
    y = torch.cat([b[1] for b in fast])
    slow = list(DataLoader(ds, batch_size=23, sampler=order.tolist()))[0]
    assert torch.equal(x, slow[0]) and torch.equal(y, slow[1])
    again = torch.cat([b[1] for b in ds.batches(4, shuffle=True)])
    assert sorted(again.tolist()) == sorted(ds.labels.tolist())


def test_views_share_pixels_and_change_only_what_they_say():
    ds = _small_set()
    other = ds.with_normalization((0.5,), (0.5,))
    assert other.images is ds.images and other.mean == (0.5, 0.5, 0.5)
    assert torch.allclose(other[0][0], ds.images[0].float() / 255 * 2 - 1, atol=1e-6)
    ood = ds.as_ood()
    assert (ood.labels == -1).all() and ood.images is ds.images and (ds.labels >= 0).all()
    assert ds.preprocessing == {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3), "size": (4, 5)}
    sub = ds.subset([4, 1])
    assert torch.equal(sub.images[0], ds.images[4]) and len(sub) == 2
    both = ds + ood
    assert isinstance(both, ImageTensors) and len(both) == 20 and (both.labels[10:] == -1).all()
    assert ds.to("cpu") is ds


def test_image_tensors_validates_input():
    with pytest.raises(TypeError):
        ImageTensors(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        ImageTensors(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        three = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
        ImageTensors(three, torch.zeros(2, dtype=torch.long), (0.1, 0.2))
    with pytest.raises(TypeError):
        ImageTensors(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2))
    with pytest.raises(ValueError):
        ImageTensors.concat([_small_set(), _small_set().with_normalization((0.5,), (0.5,))])


# -- digits -----------------------------------------------------------------------------------


def test_digits_splits_are_disjoint_stratified_and_fixed():
    idx = {s: set(digits_split_indices(s).tolist()) for s in SPLITS}
    assert [len(idx[s]) for s in ("train", "val", "train_full", "test")] == [1077, 180, 1257, 540]
    assert idx["train"] | idx["val"] == idx["train_full"]
    assert not idx["train"] & idx["val"] and not idx["train_full"] & idx["test"]
    assert len(idx["train_full"] | idx["test"]) == 1797
    # test does not move with the seed; val does
    assert set(digits_split_indices("test", seed=3).tolist()) == idx["test"]
    assert set(digits_split_indices("val", seed=3).tolist()) != idx["val"]
    _, labels = digits_arrays()
    counts = np.bincount(labels.numpy()[sorted(idx["val"])], minlength=10)
    assert counts.min() >= 17 and counts.max() <= 19  # stratified


def test_digits_split_tensors_and_meta():
    test = load_split("digits", "test")
    assert test.images.dtype == torch.uint8 and test.shape == (1, 8, 8) and len(test) == 540
    assert set(test.images.unique().tolist()) <= DIGIT_LEVELS
    assert test.labels.min() == 0 and test.labels.max() == 9
    meta = dataset_meta("digits")
    assert meta == {
        "num_classes": 10, "in_channels": 1, "size": (8, 8), "mean": DIGITS_MEAN,
        "std": DIGITS_STD,
    }
    assert test.preprocessing["mean"] == DIGITS_MEAN
    assert DATASETS["digits"].test_size == len(test)


def test_digits_normalisation_is_train_statistics():
    train_full = load_split("digits", "train_full")
    x = train_full.images.double() / 255
    assert abs(x.mean().item() - DIGITS_MEAN[0]) < 5e-5
    assert abs(x.std().item() - DIGITS_STD[0]) < 5e-5


@pytest.mark.parametrize("name", DIGITS_OOD)
def test_digits_ood_sets(name):
    ds = load_ood(name, like="digits")
    assert ds.name == name and ds.shape == (1, 8, 8) and ds.images.dtype == torch.uint8
    assert (ds.labels == -1).all()
    assert 400 <= len(ds) <= 600  # comparable to the 540 test digits
    assert set(ds.images.unique().tolist()) <= DIGIT_LEVELS  # same value set as the digits
    assert ds.mean == DIGITS_MEAN and ds.std == DIGITS_STD
    again = load_ood(name, like="digits")
    assert torch.equal(again.images, ds.images)  # reproducible
    other = load_ood(name, like="digits", seed=1)
    assert not torch.equal(other.images, ds.images)  # the seed matters
    assert len(load_ood(name, like="digits", n=50)) == 50


def test_rotated_digits_are_test_digits_without_zeros():
    images, labels = digits_arrays()
    test_idx = digits_split_indices("test")
    keep = test_idx[labels.numpy()[test_idx] != 0]
    rotated = load_ood("rotated")
    assert len(rotated) == len(keep) == 486
    for i in (0, 7, 100):
        src = images[keep[i]]
        assert any(torch.equal(rotated.images[i], torch.rot90(src, k, (1, 2))) for k in (1, 3))


def test_patches_are_not_flat():
    ds = load_ood("patches")
    per_image_std = ds.images.float().flatten(1).std(1)
    assert (per_image_std > 0).float().mean() > 0.9


# -- noise ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_is_a_function_of_seed_and_index(kind):
    a = noise_image(kind, 7, 3, (1, 8, 8))
    assert torch.equal(a, noise_image(kind, 7, 3, (1, 8, 8)))
    assert not torch.equal(a, noise_image(kind, 7, 4, (1, 8, 8)))
    assert not torch.equal(a, noise_image(kind, 8, 3, (1, 8, 8)))
    lazy = NoiseDataset(kind, 20, (1, 8, 8), seed=7, mean=DIGITS_MEAN, std=DIGITS_STD)
    x3, y3 = lazy[3]
    assert y3 == -1 and torch.equal(x3, lazy[3][0])
    full = lazy.materialize()
    assert torch.equal(full.images[3], a) and torch.equal(full[3][0], x3)


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_same_across_passes_and_workers(kind):
    lazy = NoiseDataset(kind, 24, (1, 8, 8), seed=2, mean=DIGITS_MEAN, std=DIGITS_STD, levels=17)
    ref = torch.stack([lazy[i][0] for i in range(24)])
    passes = []
    for _ in range(2):
        loader = DataLoader(lazy, batch_size=5, num_workers=2, shuffle=False)
        passes.append(torch.cat([x for x, _ in loader]))
    assert torch.equal(passes[0], ref) and torch.equal(passes[1], ref)
    # shuffled order: each image still depends on its index only
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(24, generator=g)
    loader = DataLoader(torch.utils.data.Subset(lazy, order.tolist()), batch_size=6, num_workers=2)
    assert torch.equal(torch.cat([x for x, _ in loader]), ref[order])
    # ... and equals the materialised set that load_ood returns
    materialised = load_ood(kind, like="digits", n=24, seed=2)
    assert torch.equal(materialised.images, lazy.materialize().images)
    assert torch.equal(torch.stack([materialised[i][0] for i in range(24)]), ref)


def test_noise_statistics():
    g = load_ood("gaussian", size=(8, 8), channels=3, n=200, mean=(0.5,) * 3, std=(0.5,) * 3)
    u = load_ood("uniform", size=(8, 8), channels=3, n=200, mean=(0.5,) * 3, std=(0.5,) * 3)
    gx, ux = g.images.double() / 255, u.images.double() / 255
    assert abs(gx.mean() - 0.5) < 0.01 and abs(gx.std() - 0.24) < 0.02  # clipped N(.5, .25^2)
    assert abs(ux.mean() - 0.5) < 0.01 and abs(ux.std() - 12 ** -0.5) < 0.01
    assert g.shape == (3, 8, 8) and u.images.dtype == torch.uint8


# -- helpers ----------------------------------------------------------------------------------


def test_subsample_ood_is_seeded_and_without_replacement():
    draws = subsample_ood(1000, 200, repeats=10, seed=0)
    assert len(draws) == 10 and all(len(d) == 200 == len(set(d.tolist())) for d in draws)
    assert all(np.array_equal(a, b) for a, b in zip(draws, subsample_ood(1000, 200, 10, 0)))
    assert not np.array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], subsample_ood(1000, 200, 10, 1)[0])
    assert np.array_equal(subsample_ood(50, 200, 2)[1], np.arange(50))
    assert paper_ood_size(10000) == 2000


def test_stratified_holdout():
    labels = np.repeat(np.arange(4), 50)
    kept, held = stratified_holdout(labels, 0.1, seed=0)
    assert len(held) == 20 and np.bincount(labels[held]).tolist() == [5] * 4
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == 200


def test_unknown_names():
    with pytest.raises(UnknownNameError) as err:
        load_split("cifar-11", "test")
    assert err.value.closest in {"cifar10", "cifar100"}
    with pytest.raises(UnknownNameError):
        load_ood("gausian")
    with pytest.raises(ValueError):
        load_split("digits", "validation")
    assert set(PAPER_OOD) <= set(OOD_SETS)


# -- CIFAR / SVHN / image folders on tiny real-format fixtures ---------------------------------


@pytest.mark.parametrize("which, k", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_through_torchvision_reader(which, k, tmp_path):
    from fake_data import fake_images, write_cifar

    write_cifar(tmp_path, which, n_train=30, n_test=12, seed=3)
    test = load_split(which, "test", root=tmp_path)
    assert test.shape == (3, 32, 32) and len(test) == 12 and test.name == which
    assert test.labels.tolist() == [i % k for i in range(12)]
    expected = torch.from_numpy(fake_images(np.arange(12) % k, (32, 32), 4)).permute(0, 3, 1, 2)
    assert torch.equal(test.images, expected)  # pixels survive the pickle round trip
    assert test.mean == DATASETS[which].mean and len(test.classes) == k
    full = load_split(which, "train_full", root=tmp_path)
    train, val = (load_split(which, s, root=tmp_path) for s in ("train", "val"))
    assert len(full) == 30 and len(train) + len(val) == 30 and len(val) == 3
    assert dataset_meta(which)["num_classes"] == k


def test_cifar_checksums_apply_to_every_folder(tmp_path):
    from fake_data import write_cifar

    folder = write_cifar(tmp_path, "cifar10", 10, 10)
    batch = folder / "data_batch_1"
    data = bytearray(batch.read_bytes())
    data[len(data) // 2] ^= 0xFF  # no longer a file the fixture wrote: its MD5 must match
    batch.write_bytes(bytes(data))
    with pytest.raises(MissingDataError) as err:
        load_split("cifar10", "test", root=tmp_path)
    assert "corrupted" in str(err.value) and "data_batch_1" in str(err.value)


def test_missing_cifar_message(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_split("cifar100", "train", root=tmp_path)
    msg = str(err.value)
    assert "'cifar100'" in msg and str(tmp_path / "cifar-100-python") in msg
    assert "download=True" in msg and "cifar-100-python.tar.gz" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_svhn_test_split(tmp_path):
    from fake_data import write_svhn

    from logitnorm_plugin.data.cifar import load_svhn

    write_svhn(tmp_path, n=15)
    ds = load_svhn(tmp_path)
    assert ds.shape == (3, 32, 32) and len(ds) == 15
    assert ds.labels.tolist() == [i % 10 for i in range(15)]  # the .mat's 10 is digit 0
    ood = load_ood("svhn", root=tmp_path)
    assert (ood.labels == -1).all() and torch.equal(ood.images, ds.images)


def test_paper_ood_layouts_and_resizing(tmp_path):
    import torchvision.transforms as T
    from fake_data import write_paper_ood_sets
    from PIL import Image

    from logitnorm_plugin.data.images import list_images

    written = write_paper_ood_sets(tmp_path, n=4)
    for name in PAPER_OOD:
        ds = load_ood(name, root=tmp_path)
        assert ds.shape == (3, 32, 32) and len(ds) == 4 and ds.name == name
    # Textures: Resize(32) + CenterCrop(32) of the 40x48 originals, as the LogitNorm code does
    textures = load_ood("textures", root=tmp_path)
    first = list_images(written["textures"])[0]
    ref = T.Compose([T.Resize(32), T.CenterCrop(32), T.PILToTensor()])(
        Image.open(first).convert("RGB")
    )
    assert torch.equal(textures.images[0], ref)
    # LSUN-Crop is published at 32x32 and is used as is
    lsun = load_ood("lsun_crop", root=tmp_path)
    raw = T.PILToTensor()(Image.open(list_images(written["lsun_crop"])[0]).convert("RGB"))
    assert torch.equal(lsun.images[0], raw)
    # grey versions and seeded subsets
    grey = load_ood("isun", root=tmp_path, channels=1, mean=(0.5,), std=(0.5,))
    assert grey.shape == (1, 32, 32)
    assert len(load_ood("places365", root=tmp_path, n=2)) == 2


def test_decoded_folder_cache_follows_the_files(tmp_path):
    from fake_data import write_image_folder

    from logitnorm_plugin.data.images import CACHE_DIR

    folder = write_image_folder(tmp_path / "iSUN", None, 3, (32, 32), "png")
    first = load_ood("isun", root=tmp_path)
    cached = list((tmp_path / CACHE_DIR).glob("*.pt"))
    assert len(cached) == 1 and not (folder / CACHE_DIR).exists()
    assert torch.equal(load_ood("isun", root=tmp_path).images, first.images)
    write_image_folder(tmp_path / "iSUN", None, 4, (32, 32), "png", seed=9)  # files change
    changed = load_ood("isun", root=tmp_path)
    assert len(changed) == 4 and not torch.equal(changed.images[:3], first.images)


def test_missing_ood_folder_message(tmp_path):
    with pytest.raises(MissingDataError) as err:
        load_ood("lsun_resize", root=tmp_path)
    msg = str(err.value)
    assert "'lsun_resize'" in msg and str(tmp_path / "LSUN_resize") in msg
    assert "download=True" in msg and "LSUNResize" in msg


def test_image_folder_id_dataset(tmp_path):
    from fake_data import write_image_folder

    for split, n in (("train", 6), ("test", 2)):
        write_image_folder(tmp_path / "toy" / split, ["cat", "dog", "eel"], n, (16, 16), "png")
    path = str(tmp_path / "toy")
    meta = dataset_meta(path)
    assert meta["num_classes"] == 3 and meta["size"] == (16, 16) and len(meta["mean"]) == 3
    test = load_split(path, "test")
    assert len(test) == 6 and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert test.classes == ["cat", "dog", "eel"] and test.mean == meta["mean"]
    train, val = load_split(path, "train"), load_split(path, "val")
    assert len(train) + len(val) == 18 and len(val) == 2


# -- damaged files (issue 10) -------------------------------------------------------------------


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"this is not an image" * 10)
    else:  # empty
        path.write_bytes(b"")


@pytest.mark.parametrize("fmt", ["jpg", "png"])
@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_damaged_image_in_an_image_folder_names_the_file(tmp_path, fmt, how):
    from fake_data import write_image_folder

    from logitnorm_plugin._core.errors import CorruptDataError, UserError

    for split, n in (("train", 3), ("test", 2)):
        write_image_folder(tmp_path / "toy" / split, ["cat", "dog"], n, (16, 16), fmt)
    bad = tmp_path / "toy" / "test" / "dog" / f"img_0001.{fmt}"
    _damage(bad, how)
    with pytest.raises(CorruptDataError) as err:
        load_split(str(tmp_path / "toy"), "test")
    msg = str(err.value)
    assert str(bad) in msg and "Remove it, or replace it" in msg and "\n" not in msg
    assert isinstance(err.value, UserError) and isinstance(err.value, OSError)
    # the first training image, whose header gives the image size, is named the same way
    first = tmp_path / "toy" / "train" / "cat" / f"img_0000.{fmt}"
    _damage(first, how)
    with pytest.raises(CorruptDataError, match="Remove it") as err:
        load_split(str(tmp_path / "toy"), "train")
    assert str(first) in str(err.value)


def test_damaged_image_in_an_ood_folder_names_the_file(tmp_path):
    from fake_data import write_image_folder

    from logitnorm_plugin._core.errors import CorruptDataError

    folder = write_image_folder(tmp_path / "iSUN", None, 3, (32, 32), "jpeg")
    bad = folder / "img_0002.jpeg"
    _damage(bad, "truncated")
    with pytest.raises(CorruptDataError, match="Remove it") as err:
        load_ood("isun", root=tmp_path)
    assert str(bad) in str(err.value)


def test_cli_damaged_image_is_one_line_with_exit_2(tmp_path, capsys, monkeypatch):
    from fake_data import write_image_folder

    from logitnorm_plugin import cli

    for split, n in (("train", 3), ("test", 2)):
        write_image_folder(tmp_path / "toy" / split, ["cat", "dog"], n, (16, 16), "png")
    bad = tmp_path / "toy" / "train" / "dog" / "img_0002.png"
    _damage(bad, "truncated")
    monkeypatch.chdir(tmp_path)
    status = cli.main(["train", "--dataset", str(tmp_path / "toy"), "--loss", "cross_entropy",
                       "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("logitnorm-ood train: error: Cannot decode the image")
    assert str(bad) in err and "Traceback" not in err and err.count("\n") == 1
