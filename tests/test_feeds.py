"""The engine's one pass feeds every detector kind: scores equal the host classes built by hand
on the model's own parts and fitted on the same data, with one forward pass per dataset and one
pass over the training split shared by every fit."""

import functools

import pytest
import torch
from host_detectors import Reads, briefly_trained, by_hand
from pytorch_ood.api import GradientDetector, LogitsDetector
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.metrics import OODMetrics
from torch import nn
from torch.utils.data import DataLoader

import logitnorm_plugin
from logitnorm_plugin._core.errors import UnsupportedModelError
from logitnorm_plugin.data import load_split
from logitnorm_plugin.data.digits import digits_ood
from logitnorm_plugin.evaluation.engine import evaluate
from logitnorm_plugin.evaluation.feeds import BACKBONE, FEATURES, INPUT, LOGITS, MAPS, Feed, plan
from logitnorm_plugin.models import DigitsCNN

BATCH = 25
METRICS = ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "AUTC")
#: registered detectors whose scores two runs cannot reproduce, and why
NOT_COMPARABLE = {"mc_dropout": "samples random dropout masks at every call"}
NAMES = [n for n in logitnorm_plugin.list_detectors() if n not in NOT_COMPARABLE]


@functools.lru_cache(maxsize=1)
def _digits():
    def take(dataset, n, label=None):
        x = torch.stack([dataset[i][0] for i in range(n)])
        y = torch.tensor([int(dataset[i][1]) for i in range(n)]) if label is None else \
            torch.full((n,), label)
        return x, y

    return {"train": take(load_split("digits", "train"), 300),
            "id": take(load_split("digits", "test"), 100),
            **{name: take(digits_ood(name), 50, -1) for name in ("rotated", "gaussian")}}


class DigitsBench(Benchmark):
    """300 training digits, 100 test digits, 50 rotated and 50 Gaussian-noise images."""

    ood_names = ["rotated", "gaussian"]

    def __init__(self):
        data = _digits()
        self.train, self.id = Reads(*data["train"]), Reads(*data["id"])
        self.oods = [Reads(*data[name]) for name in self.ood_names]

    def train_set(self):
        return self.train

    def test_sets(self, known=True, unknown=True):
        return [self.id] if known and not unknown else list(self.oods)

    def reads(self):
        return {"train": self.train.reads, "id": self.id.reads,
                **{n: d.reads for n, d in zip(self.ood_names, self.oods)}}


class CountingCNN(DigitsCNN):
    """DigitsCNN counting the samples its convolutional body sees."""

    body_samples = 0

    def feature_maps(self, x):
        self.body_samples += x.shape[0]
        return super().feature_maps(x)




@pytest.fixture(scope="module")
def trained():
    """A CountingCNN (D = 16) trained briefly on the digits: every class is predicted right
    at least once (SHE needs that)."""
    return briefly_trained(CountingCNN(10, 1, width=4, drop_rate=0.2))


@pytest.fixture(scope="module")
def together(trained):
    """Every comparable detector in ONE evaluate() call, with the scores kept."""
    bench, scores = DigitsBench(), {}
    rows = evaluate({"m": trained}, bench, detectors=NAMES, batch_size=BATCH, progress=False,
                    keep_scores=True, scores_out=scores)
    return {(r["Detector"], r["Dataset"]): r for r in rows}, scores


def host_scores(detector, dataset, model):
    """Scores as the host computes them: logits detectors on the whole set's logits (as
    ``Benchmark.evaluate`` does; OpenMax's scores depend on which samples share a call), the
    others with ``predict`` per batch."""
    x = torch.stack([dataset.x[i] for i in range(len(dataset))])
    batches = [x[i:i + BATCH] for i in range(0, len(x), BATCH)]
    if isinstance(detector, LogitsDetector) and not isinstance(detector, GradientDetector):
        with torch.no_grad():
            return detector.predict_logits(torch.cat([model(b) for b in batches])).detach()
    return torch.cat([detector.predict(b).detach() for b in batches])


@pytest.mark.parametrize("name", NAMES)
def test_scores_equal_the_host_class_built_by_hand(name, trained, together):
    rows, scores = together
    bench = DigitsBench()
    detector = by_hand(logitnorm_plugin.get_detector_class(name), trained)
    if detector.requires_fit:
        detector.fit(DataLoader(bench.train, batch_size=BATCH))
    id_scores = host_scores(detector, bench.id, trained)
    torch.testing.assert_close(scores[("m", name, "ID")], id_scores.float().cpu(),
                               atol=1e-5, rtol=1e-5)
    for dataset, ood in zip(bench.ood_names, bench.oods):
        ood_scores = host_scores(detector, ood, trained)
        metrics = OODMetrics()
        metrics.update(torch.cat([id_scores, ood_scores]).cpu(),
                       torch.cat([bench.id.y, ood.y]))
        expected = metrics.compute()
        for key in METRICS:
            assert rows[(name, dataset)][key] == pytest.approx(expected[key], abs=1e-5), key


def test_every_kind_together_costs_one_forward_per_dataset_and_one_train_pass(trained,
                                                                              tmp_path):
    detectors = ["msp", "energy", "kl_matching",          # logits, one fitted
                 "knn", "mahalanobis", "vim",              # features, fitted
                 "react", "ash",                           # backbone, penultimate
                 ("vra", {"layer": "feature_maps"}),       # backbone, feature maps, fitted
                 "rankfeat",                               # backbone, feature maps
                 "odin"]                                   # fused input gradient
    bench = DigitsBench()
    trained.body_samples = 0
    first = evaluate({"m": trained}, bench, detectors=detectors, batch_size=BATCH,
                     progress=False, cache_dir=tmp_path)
    n_train, n_test = 300, 100 + 50 + 50
    # the train split once (every fit), each test set once, ODIN's perturbed forward of each
    # test set, and the split check: model(x) on the first batch
    assert trained.body_samples == n_train + 2 * n_test + BATCH
    assert bench.reads() == {"train": 300, "id": 100, "rotated": 50, "gaussian": 50}

    trained.body_samples = 0
    bench = DigitsBench()
    again = evaluate({"m": trained}, bench, detectors=detectors, batch_size=BATCH,
                     progress=False, cache_dir=tmp_path)
    assert trained.body_samples == 2 * n_test + BATCH  # no train pass: the fit cache
    assert bench.reads() == {"train": 0, "id": 100, "rotated": 50, "gaussian": 50}
    assert again == first

    # the host: every detector fitted and scored with its own passes
    trained.body_samples = 0
    host = [by_hand(logitnorm_plugin.get_detector_class(n if isinstance(n, str) else n[0]),
                    trained) for n in detectors]
    host[8] = logitnorm_plugin.get_detector_class("vra")(
        trained.feature_maps, trained.forward_feature_maps, 0.10, 0.90)
    for detector in host:
        if detector.requires_fit:
            detector.fit(DataLoader(DigitsBench().train, batch_size=BATCH))
    assert trained.body_samples == 6 * n_train  # six fits, six train passes


def test_logits_only_detectors_forward_the_model_as_before(trained):
    bench = DigitsBench()
    calls = []
    hook = trained.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        evaluate({"m": trained}, bench, detectors=["msp", "energy", "kl_matching"],
                 batch_size=BATCH, progress=False)
    finally:
        hook.remove()
    assert sum(calls) == 300 + 100 + 50 + 50  # model(x): train, ID, each OOD set


def test_callers_feature_detector_instance_runs_its_own_passes(trained):
    knn = by_hand(logitnorm_plugin.get_detector_class("knn"), trained)
    bench = DigitsBench()
    trained.body_samples = 0
    given = evaluate({"m": trained}, bench, detectors=[knn, "msp"], batch_size=BATCH,
                     progress=False)
    # its own fit(loader) and predict(x) passes, msp's logits from model(x)
    assert trained.body_samples == 300 + 2 * (100 + 50 + 50)
    by_name = evaluate({"m": trained}, DigitsBench(), detectors=["knn", "msp"],
                       batch_size=BATCH, progress=False)
    assert given == by_name


class Opaque(nn.Module):
    """No split: a convolution whose flattened output are the logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 4, stride=4)

    def forward(self, x):
        return self.conv(x).flatten(1)[:, :10]


def test_unsplittable_model_keeps_logits_detectors_and_refuses_feature_ones():
    torch.manual_seed(0)
    model = Opaque().eval()
    rows = evaluate({"m": model}, DigitsBench(), detectors=["msp", "kl_matching", "odin"],
                    batch_size=BATCH, progress=False)
    assert len(rows) == 6 and all(0 <= r["AUROC"] <= 1 for r in rows)
    with pytest.raises(UnsupportedModelError, match="Opaque"):
        evaluate({"m": model}, DigitsBench(), detectors=["msp", "knn"], progress=False)


class Doubled(DigitsCNN):
    """Declares the split protocol but returns twice the head's logits."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_split_that_does_not_give_the_models_logits_is_refused():
    torch.manual_seed(0)
    model = Doubled(10, 1, width=4).eval()
    with pytest.raises(UnsupportedModelError, match="differs from model"):
        evaluate({"m": model}, DigitsBench(), detectors=["msp", "ash"], progress=False)
    with pytest.raises(UnsupportedModelError, match="feature_maps path differs"):
        evaluate({"m": model}, DigitsBench(), detectors=["rankfeat"], progress=False)
    # logits detectors alone never use the split
    assert len(evaluate({"m": model}, DigitsBench(), detectors=["msp"], progress=False)) == 2


def test_plan_names_the_feed_of_each_kind():
    get = logitnorm_plugin.get_detector_class
    assert plan(get("msp"), {}) == (Feed(LOGITS), {})
    assert plan(get("kl_matching"), {}) == (Feed(LOGITS, fit_from=LOGITS), {})
    assert plan(get("knn"), {}) == (Feed(FEATURES, fit_from=FEATURES), {})
    assert plan(get("lts"), {}) == (Feed(FEATURES), {})
    feed, extra = plan(get("react"), {})
    assert feed == Feed(BACKBONE, "penultimate", FEATURES)
    assert isinstance(extra["backbone"], nn.Identity)
    assert plan(get("vra"), {"layer": "feature_maps"})[0] == Feed(BACKBONE, "feature_maps", MAPS)
    assert plan(get("rankfeat"), {})[0] == Feed(BACKBONE, "feature_maps")
    assert plan(get("odin"), {}) == (Feed(INPUT), {})
    assert plan(get("mahalanobis_odin"), {}) == (Feed(INPUT, fit_from=FEATURES), {})
    # parts given by the caller: its own passes
    assert plan(get("knn"), {"encoder": nn.Identity()}) == (Feed(INPUT), {})
    assert plan(get("ash"), {"backbone": nn.Identity(), "head": nn.Identity()})[0].kind == INPUT
