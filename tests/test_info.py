"""Every registered name, parametrized over the registry itself: a new entry is tested with no
edit here. Each class resolves, carries its own ``info`` of the right type, and works."""

import pytest
import torch
from pytorch_ood.api import BenchmarkInfo, DetectorInfo, LossInfo
from torch.utils.data import DataLoader, TensorDataset

import logitnorm_plugin
from logitnorm_plugin.models import DigitsCNN
from logitnorm_plugin.registry import entry_points as registry

CLASSES, SHAPE = 4, (1, 8, 8)


def _fit_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, *SHAPE, generator=g)
    y = torch.arange(64) % CLASSES  # every class present
    return x, y


def _tiny_model():
    """A model that logitnorm_plugin.registry.split understands completely (features, feature maps,
    final Linear), with dropout so that MC dropout samples. Its head is the nearest class mean
    of the fit data, so that every class has correctly classified samples (SHE fits on those)."""
    torch.manual_seed(0)
    model = DigitsCNN(CLASSES, in_channels=SHAPE[0], width=2, drop_rate=0.2).eval()
    x, y = _fit_data()
    with torch.no_grad():
        z = model.features(x)
        means = torch.stack([z[y == c].mean(0) for c in range(CLASSES)])
        model.fc.weight.copy_(means)
        model.fc.bias.copy_(-0.5 * means.square().sum(1))
        correct = model(x).argmax(1) == y
    assert set(y[correct].tolist()) == set(range(CLASSES))
    return model


def _fit_loader():
    return DataLoader(TensorDataset(*_fit_data()), batch_size=16)


@pytest.mark.parametrize("name", logitnorm_plugin.list_losses())
def test_loss_has_own_info_and_gives_finite_scalar_with_gradient(name):
    cls = logitnorm_plugin.get_loss_class(name)
    assert isinstance(cls.__dict__.get("info"), LossInfo), f"{cls} lacks its own LossInfo"
    # the model being trained: objectives that declare model parts bind them, others ignore it
    loss = logitnorm_plugin.create_loss(name, model=_tiny_model())
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
    x = torch.randn(5, *SHAPE)
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
