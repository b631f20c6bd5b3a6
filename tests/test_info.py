"""Every registered name, parametrized over the registry itself: a new entry is tested with no
edit here. Each class resolves, carries its own ``info`` of the right type, and works."""

import pytest
import torch
from pytorch_ood.api import BenchmarkInfo, DetectorInfo, LossInfo
from torch.utils.data import DataLoader, TensorDataset

import logitnorm_plugin
from logitnorm_plugin import registry

CLASSES, FEATURES = 4, 6


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),  # lets MC dropout sample
        torch.nn.Linear(16, CLASSES),
    ).eval()


def _fit_loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, FEATURES, generator=g)
    y = torch.arange(64) % CLASSES  # every class present
    return DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.mark.parametrize("name", logitnorm_plugin.list_losses())
def test_loss_has_own_info_and_gives_finite_scalar_with_gradient(name):
    cls = logitnorm_plugin.get_loss_class(name)
    assert isinstance(cls.__dict__.get("info"), LossInfo), f"{cls} lacks its own LossInfo"
    loss = logitnorm_plugin.create_loss(name)
    logits = torch.randn(8, CLASSES, requires_grad=True)
    value = loss(logits, torch.arange(8) % CLASSES)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", logitnorm_plugin.list_detectors())
def test_detector_has_own_info_and_gives_finite_scores(name):
    cls = logitnorm_plugin.get_detector_class(name)
    assert isinstance(cls.__dict__.get("info"), DetectorInfo), f"{cls} lacks its own DetectorInfo"
    model = _tiny_model()
    detector = logitnorm_plugin.create_detector(name, model)
    if cls.requires_fit:
        detector.fit(_fit_loader())
    x = torch.randn(5, FEATURES)
    scores = detector(x)
    assert scores.shape == (5,)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", logitnorm_plugin.list_benchmarks())
def test_benchmark_has_own_info(name):
    from pytorch_ood.benchmark import Benchmark

    cls = logitnorm_plugin.get_benchmark_class(name)
    assert issubclass(cls, Benchmark)
    assert isinstance(cls.__dict__.get("info"), BenchmarkInfo), f"{cls} lacks its own info"


@pytest.mark.parametrize("kind", sorted(registry.GROUPS))
def test_every_entry_of_this_distribution_loads(kind):
    for entry in registry.entries(kind):
        if entry.distribution == registry.THIS_DISTRIBUTION:
            assert isinstance(entry.load(), type)
