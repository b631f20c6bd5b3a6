"""Every registered detector, parametrized over the registry: built by name with
``create_detector(name, model)`` it is the host class itself and scores exactly like the host
class built by hand from the model's own parts (same fit data, same scores, same metrics).
Feature-based detectors get their parts from :mod:`logitnorm_plugin.registry.split`."""

import inspect

import pytest
import pytorch_ood.detector as host
import torch
from host_detectors import briefly_trained, by_hand
from pytorch_ood.metrics import OODMetrics
from pytorch_ood.model import WideResNet
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import logitnorm_plugin
from logitnorm_plugin._core.errors import UnsupportedModelError
from logitnorm_plugin.data import load_split
from logitnorm_plugin.data.digits import digits_ood
from logitnorm_plugin.models import DigitsCNN
from logitnorm_plugin.registry import entry_points as registry
from logitnorm_plugin.registry.split import (
    LAYERS,
    PUBLISHED_DEFAULTS,
    build_detector,
    published_defaults,
    split_model,
    vim_dimension,
)


def _params(cls):
    return inspect.signature(cls).parameters


def _split_based(cls) -> bool:
    return bool({"encoder", "backbone"} & set(_params(cls)))


NAMES = logitnorm_plugin.list_detectors()
FEATURE_NAMES = [n for n in NAMES if _split_based(logitnorm_plugin.get_detector_class(n))]


@pytest.fixture(scope="module")
def digits():
    """A DigitsCNN (D = 16) trained briefly on the digits, a loader of 500 training digits for
    fitting detectors, and a batch of 60 ID test digits and 60 rotated digits (labels -1)."""
    model = briefly_trained(DigitsCNN(10, 1, width=4, drop_rate=0.2))
    train = load_split("digits", "train")
    test, ood = load_split("digits", "test"), digits_ood("rotated")
    x = torch.cat([torch.stack([test[i][0] for i in range(60)]),
                   torch.stack([ood[i][0] for i in range(60)])])
    y = torch.cat([torch.tensor([test[i][1] for i in range(60)]), torch.full((60,), -1)])
    fit = DataLoader(Subset(train, range(500)), batch_size=250)
    return model, fit, x, y


def _metrics(scores, labels):
    metrics = OODMetrics()
    metrics.update(scores, labels)
    return metrics.compute()


def _scores(detector, x):
    torch.manual_seed(0)  # MC dropout samples the same masks for both
    return detector(x).detach()


@pytest.mark.parametrize("name", NAMES)
def test_by_name_equals_host_class_by_hand(name, digits):
    model, train_loader, x, y = digits
    cls = logitnorm_plugin.get_detector_class(name)
    by_name, manual = logitnorm_plugin.create_detector(name, model), by_hand(cls, model)
    assert type(by_name) is cls
    if cls.requires_fit:
        by_name.fit(train_loader)
        manual.fit(train_loader)
    scores, expected = _scores(by_name, x), _scores(manual, x)
    assert scores.shape == (120,) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    metrics, expected_metrics = _metrics(scores, y), _metrics(expected, y)
    assert metrics.keys() == expected_metrics.keys()
    for key, value in metrics.items():
        assert value == pytest.approx(expected_metrics[key], abs=1e-5), key


def test_feature_detectors_are_registered_as_pytorch_oods_own_classes():
    required = {"mahalanobis", "rmd", "knn", "vim", "react", "ash", "dice", "she", "scale",
                "gmm", "nci", "fdbd", "nnguide"}
    assert required <= set(FEATURE_NAMES)
    for name in FEATURE_NAMES:
        module, _, attribute = registry.get_entry("detector", name).value.partition(":")
        assert module == "pytorch_ood.detector"
        assert logitnorm_plugin.get_detector_class(name) is getattr(host, attribute)


def test_published_defaults_name_real_parameters_and_are_applied(digits):
    model = digits[0]
    for class_name, entry in PUBLISHED_DEFAULTS.items():
        cls = getattr(host, class_name)
        assert entry["source"].strip(), class_name
        assert entry.get("layer", "penultimate") in LAYERS
        values = {k: v for k, v in entry.items() if k not in ("source", "layer")}
        assert set(values) <= set(_params(cls)), class_name
        detector = build_detector(cls, model)
        for key, value in values.items():
            value = value(model.fc.in_features) if callable(value) else value
            if key == "variant":
                assert detector.ash is cls.variants[value]
            else:
                assert getattr(detector, key) == value, (class_name, key)
    assert vim_dimension(2048) == 1000 and vim_dimension(768) == 512
    assert vim_dimension(512) == 256 and vim_dimension(16) == 8


def test_explicit_kwargs_win(digits):
    model = digits[0]
    create = logitnorm_plugin.create_detector
    assert create("knn", model, k=7).k == 7
    assert create("vim", model, d=3).d == 3
    ash = create("ash", model, percentile=0.5, variant="ash-p")
    assert ash.percentile == 0.5 and ash.ash is host.ASH.variants["ash-p"]
    assert create("react", model, threshold=1.5).threshold == 1.5
    # parts given explicitly: no split, the model may be absent
    encoder = model.features
    assert create("mahalanobis", None, encoder=encoder).encoder is encoder
    dice = create("dice", None, encoder=encoder, w=model.fc.weight, b=model.fc.bias, p=0.5)
    assert dice.p == 0.5 and dice.encoder is encoder


def test_layer_keyword_moves_feature_map_detectors_to_the_feature_maps(digits):
    model, _, x, _ = digits
    by_name = logitnorm_plugin.create_detector("ash", model, layer="feature_maps")
    manual = host.ASH(model.feature_maps, model.forward_feature_maps, "ash-s", 0.90)
    torch.testing.assert_close(by_name(x), manual(x))
    with pytest.raises(TypeError):
        logitnorm_plugin.create_detector("knn", model, layer="feature_maps")
    with pytest.raises(ValueError, match="unknown layer"):
        logitnorm_plugin.create_detector("react", model, layer="block3")


def test_unsplittable_model_fails_clearly_for_feature_detectors_only():
    class Opaque(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3]

    with pytest.raises(UnsupportedModelError, match="Opaque"):
        logitnorm_plugin.create_detector("knn", Opaque())
    # logits detectors take the model as before
    assert logitnorm_plugin.create_detector("msp", Opaque())(torch.randn(2, 5)).shape == (2,)


# kind -> (builder, input size); WideResNet's pooling needs 32 x 32. Small feature dimensions
# keep the covariance-based detectors fast; test_split covers the torchvision models' parts.
MODEL_KINDS = {
    "pytorch-ood-wrn": (lambda: WideResNet(3, depth=10, widen_factor=1), 32),
    "sequential-cnn-without-maps": (
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(8, 3)), 16),
}


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_every_feature_detector_fits_and_scores_on_other_model_kinds(kind):
    builder, size = MODEL_KINDS[kind]
    torch.manual_seed(0)
    model = builder().eval()
    parts = split_model(model)
    g = torch.Generator().manual_seed(2)
    # 51 samples: KNN's published k = 50 needs 50 neighbours
    x, y = torch.randn(51, 3, size, size, generator=g), torch.arange(51) % 3
    with torch.no_grad():  # a nearest-class-mean head: every class has correct predictions
        z = parts.encoder(x)
        means = torch.stack([z[y == c].mean(0) for c in range(3)])
        parts.head.weight.copy_(means)
        parts.head.bias.copy_(-0.5 * means.square().sum(1))
    assert set(model(x).argmax(1)[y == model(x).argmax(1)].tolist()) == {0, 1, 2}
    loader = DataLoader(TensorDataset(x, y), batch_size=51)
    for name in FEATURE_NAMES:
        cls = logitnorm_plugin.get_detector_class(name)
        if published_defaults(cls).get("layer") == "feature_maps" and parts.backbone is None:
            with pytest.raises(UnsupportedModelError, match="feature maps"):
                logitnorm_plugin.create_detector(name, model)
            continue
        detector = logitnorm_plugin.create_detector(name, model)
        if cls.requires_fit:
            detector.fit(loader)
        scores = detector(x[:4])
        assert scores.shape == (4,) and torch.isfinite(scores).all(), name
