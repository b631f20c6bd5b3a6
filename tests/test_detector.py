"""LogitNormDetector: formula, pytorch-ood's Benchmark.evaluate and GridSearch."""

import pytest
import torch
from pytorch_ood.api import DetectorInfo, LogitsDetector
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.detector import MaxSoftmax
from pytorch_ood.metrics import OODMetrics
from pytorch_ood.utils import GridSearch
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from logitnorm_plugin import LogitNormDetector, create_detector


class CountingModel(torch.nn.Module):
    """A small classifier that counts its forward calls and samples."""

    def __init__(self, in_features=6, classes=4):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, classes)
        )
        self.calls = 0
        self.samples = 0

    def forward(self, x):
        self.calls += 1
        self.samples += x.shape[0]
        return self.net(x)


class InMemoryBenchmark(Benchmark):
    """ID set plus two OOD sets held in tensors (labels as tensors everywhere)."""

    def __init__(self, n_id=40, n_ood=30, features=6):
        g = torch.Generator().manual_seed(3)
        self.id_test = TensorDataset(torch.randn(n_id, features, generator=g),
                                     torch.randint(0, 4, (n_id,), generator=g))
        self.oods = [
            TensorDataset(2 + torch.randn(n_ood, features, generator=g),
                          -torch.ones(n_ood, dtype=torch.long)),
            TensorDataset(torch.rand(n_ood, features, generator=g) * 4,
                          -torch.ones(n_ood, dtype=torch.long)),
        ]
        self.ood_names = ["shifted", "uniform"]

    def train_set(self):
        return self.id_test

    def test_sets(self, known=True, unknown=True):
        if known and unknown:
            return [ConcatDataset([self.id_test, ood]) for ood in self.oods]
        if known:
            return [self.id_test]
        if unknown:
            return self.oods
        raise ValueError("At least one of `known` or `unknown` must be True")


def _expected_scores(logits, t):
    z = logits / (t * (logits.norm(dim=1, keepdim=True) + 1e-7))
    return -z.softmax(dim=1).max(dim=1).values


def test_score_formula_and_convention():
    logits = torch.randn(16, 7) * 5
    detector = LogitNormDetector(None, t=0.1)
    scores = detector.predict_logits(logits)
    assert scores.shape == (16,)
    assert torch.allclose(scores, _expected_scores(logits, 0.1), atol=1e-7)
    # larger = more OOD: a confident logit vector scores lower than a flat one
    confident, flat = torch.tensor([[10.0, 0, 0]]), torch.tensor([[1.0, 1.0, 1.0]])
    assert detector.predict_logits(confident) < detector.predict_logits(flat)


def test_predict_uses_the_model_and_segmentation_shapes():
    model = CountingModel()
    x = torch.randn(5, 6)
    detector = create_detector("logitnorm", model, t=0.04)
    assert isinstance(detector, LogitNormDetector) and detector.model is model
    assert torch.allclose(detector(x), _expected_scores(model(x), 0.04))
    seg = LogitNormDetector(None).predict_logits(torch.randn(2, 5, 3, 4))
    assert seg.shape == (2, 3, 4)


def test_zero_logits_are_finite():
    assert torch.isfinite(LogitNormDetector(None).predict_logits(torch.zeros(3, 4))).all()


@pytest.mark.parametrize("t", [0, -1, float("nan"), "x"])
def test_invalid_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        LogitNormDetector(None, t=t)
    with pytest.raises(ValueError, match="temperature"):
        LogitNormDetector(None).set_hyperparameters(t=t)


def test_bad_logits_shape():
    with pytest.raises(ValueError, match="B x C"):
        LogitNormDetector(None).predict_logits(torch.randn(5))


def test_metadata():
    assert issubclass(LogitNormDetector, LogitsDetector)
    assert isinstance(LogitNormDetector.__dict__["info"], DetectorInfo)
    assert LogitNormDetector.requires_fit is False
    assert LogitNormDetector.hyperparameter_space["t"]


def test_benchmark_evaluate_shares_one_forward_with_msp():
    bench = InMemoryBenchmark()
    model = CountingModel().eval()
    detectors = [MaxSoftmax(model), LogitNormDetector(model, t=0.04)]
    results = bench.evaluate(detectors, loader_kwargs={"batch_size": 16})
    # pytorch-ood forwards ID + OOD once per OOD set, shared by both logits detectors
    # (it would be twice as many samples if each detector ran its own pass)
    assert model.samples == sum(len(d) for d in bench.test_sets())
    assert [r["Detector"] for r in results] == ["MaxSoftmax", "LogitNormDetector"] * 2
    # the LogitNorm rows equal a direct computation
    with torch.no_grad():
        for name, dataset in zip(bench.ood_names, bench.test_sets()):
            x = torch.stack([dataset[i][0] for i in range(len(dataset))])
            y = torch.stack([dataset[i][1] for i in range(len(dataset))])
            metrics = OODMetrics()
            metrics.update(_expected_scores(model.net(x), 0.04), y)
            expected = metrics.compute()
            row = next(r for r in results
                       if r["Dataset"] == name and r["Detector"] == "LogitNormDetector")
            for key in ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"):
                assert row[key] == pytest.approx(expected[key], abs=1e-6)


def test_grid_search_picks_the_best_temperature():
    bench = InMemoryBenchmark()
    model = CountingModel().eval()
    detector = LogitNormDetector(model, t=1.0)
    val_loader = DataLoader(bench.test_sets()[0], batch_size=32)
    search = GridSearch(detector, fit_loader=None, val_loader=val_loader)
    best = search.run()
    assert set(best) == {"t"} and best["t"] in LogitNormDetector.hyperparameter_space["t"]
    assert detector.t == best["t"]
    scores = {r["params"]["t"]: r["score"] for r in search.results_}
    assert len(scores) == len(LogitNormDetector.hyperparameter_space["t"])
    assert search.best_score_ == max(scores.values())


@pytest.mark.parametrize("t", [0, -1, float("inf"), 1e-300, None])
def test_temperature_set_after_construction_is_validated(t):
    detector = LogitNormDetector(None, t=0.1)
    with pytest.raises(ValueError, match="temperature"):
        detector.t = t
    with pytest.raises(ValueError, match="temperature"):
        detector.set_hyperparameters(t=t)
    assert detector.t == 0.1  # unchanged by the refused values
    assert torch.isfinite(detector.predict_logits(torch.randn(3, 4))).all()
    detector.t = 0.5
    assert detector.t == 0.5
    logits = torch.randn(3, 4)
    assert torch.allclose(detector.predict_logits(logits), _expected_scores(logits, 0.5))


def test_float16_zero_logits_score_like_float32():
    scores = LogitNormDetector(None).predict_logits(torch.zeros(3, 4, dtype=torch.float16))
    assert torch.equal(scores, torch.full((3,), -0.25))
