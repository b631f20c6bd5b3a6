"""A tiny network and a pytorch-ood ``Benchmark`` over in-memory sets, for the evaluation
engine's tests (``test_evaluate``, ``test_detector_failures``). Test code (a plain helper
module, as ``fake_data.py`` is: test files do not import each other).
"""

import torch
from pytorch_ood.benchmark import Benchmark
from torch import nn
from torch.utils.data import ConcatDataset, TensorDataset

from logitnorm_plugin.data import ImageTensors

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def tiny_net(classes=5, channels=3):
    """Conv + BatchNorm + dropout: scores differ between train and eval mode."""
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, classes),
    )


def _images(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(n, 3, 8, 8, generator=g) * 200 + shift).clamp(0, 255)).to(torch.uint8)


class InMemoryBenchmark(Benchmark):
    """A host Benchmark over in-memory sets. ``kind="tensors"``: TensorDatasets of normalised
    floats with tensor labels (uniform label types); ``kind="images"``: ImageTensors (our fast
    path, int labels through the Dataset interface for the host)."""

    def __init__(self, n_id=64, n_ood=(24, 40, 16), kind="tensors", seed=0):
        labels = torch.arange(n_id) % 5
        id_images = _images(n_id, seed)
        oods = [_images(n, seed + 1 + i, shift=40.0 * i) for i, n in enumerate(n_ood)]
        self.ood_names = [f"ood{i}" for i in range(len(n_ood))]
        if kind == "images":
            self.id = ImageTensors(id_images, labels, MEAN, STD, "id")
            self.oods = [ImageTensors(x, -torch.ones(len(x), dtype=torch.long), MEAN, STD, n)
                         for x, n in zip(oods, self.ood_names)]
        else:
            def norm(x):
                return (x.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(
                    STD).view(3, 1, 1)

            self.id = TensorDataset(norm(id_images), labels)
            self.oods = [TensorDataset(norm(x), -torch.ones(len(x), dtype=torch.long))
                         for x in oods]

    def train_set(self):
        return self.id

    def test_sets(self, known=True, unknown=True):
        if known and unknown:
            return [ConcatDataset([self.id, o]) for o in self.oods]
        if known:
            return [self.id]
        return list(self.oods)
