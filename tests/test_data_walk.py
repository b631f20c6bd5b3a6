"""The data walk (issue 17): a training run reads and resolves its dataset name once and
decodes an image folder's training images once; a benchmark resolves its ID dataset once.
``benchmarks/data_walk.py`` prints the same counts for a whole ``bench`` and ``train``."""

import collections
import sys
from pathlib import Path

import pytest
import torch
from fake_data import write_image_folder

import logitnorm_plugin.data as data
from logitnorm_plugin._core import conventions
from logitnorm_plugin.data import images, load_split
from logitnorm_plugin.data.benchmarks import DigitsBenchmark
from logitnorm_plugin.training.loop import train


@pytest.fixture
def counted(monkeypatch):
    """Calls of ``canonical_name`` by argument, and decodes of image files by split folder."""
    calls = collections.Counter()
    decoded = collections.Counter()
    original, decode_image = conventions.canonical_name, images.decode_image

    def canonical_name(name, *args, **kwargs):
        calls[str(name)] += 1
        return original(name, *args, **kwargs)

    def counted_decode(path, *args, **kwargs):
        decoded[Path(path).parent.parent.name] += 1
        return decode_image(path, *args, **kwargs)

    for module in list(sys.modules.values()):
        if (getattr(module, "__name__", "") or "").startswith("logitnorm_plugin") and \
                getattr(module, "canonical_name", None) is original:
            monkeypatch.setattr(module, "canonical_name", canonical_name)
    monkeypatch.setattr(images, "decode_image", counted_decode)
    return calls, decoded


def _folder_dataset(root: Path) -> Path:
    """``root/shapes/{train,test}/{a,b}/*.png``: 6 train and 2 test images per class."""
    for split, n, seed in (("train", 6, 1), ("test", 2, 2)):
        write_image_folder(root / "shapes" / split, ["a", "b"], n, (32, 32), "png", seed=seed)
    return root / "shapes"


def test_training_on_an_image_folder_resolves_and_decodes_it_once(tmp_path, counted):
    calls, decoded = counted
    dataset = str(_folder_dataset(tmp_path / "data"))
    result = train(dataset, loss="cross_entropy", epochs=1, batch_size=4, out=tmp_path / "r",
                   progress=False)
    assert calls[dataset] == 1  # before: 5 calls at 3 places
    assert decoded == {"train": 12, "test": 4}  # every file once
    # the statistics are the ones dataset_meta gives (and config.json always recorded)
    meta = data.dataset_meta(dataset)
    assert result.card["preprocessing"]["mean"] == pytest.approx(list(meta["mean"]))
    assert result.card["preprocessing"]["std"] == pytest.approx(list(meta["std"]))


def test_the_opened_splits_equal_load_split(tmp_path):
    dataset = str(_folder_dataset(tmp_path / "data"))
    opened = data.open_dataset(dataset)
    assert opened.meta == data.dataset_meta(dataset)
    for split in ("train_full", "train", "val", "test"):
        a, b = opened.split(split, seed=3), load_split(dataset, split, seed=3)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert (a.mean, a.std, a.classes) == (b.mean, b.std, b.classes)


def test_a_benchmark_resolves_its_id_dataset_once(counted):
    calls, _ = counted
    bench = DigitsBenchmark(seed=0)
    bench.id_test_set()
    bench.ood_sets()
    bench.train_set()
    bench.val_ood_set()
    assert calls["digits"] == 1  # before: 18 calls at 4 places
