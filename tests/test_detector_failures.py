"""A detector whose arguments are accepted when it is built but fail when it is fitted or
scores: one error naming that detector (with its arguments), the model and the data, its own
exception chained; a failure of the engine's own code keeps its traceback (issue 22, point 11).
"""

import pytest
import torch
from memory_benchmark import InMemoryBenchmark, tiny_net
from pytorch_ood.detector import ODIN, ReAct

from logitnorm_plugin._core.errors import DetectorFitError, DetectorScoreError, UserError
from logitnorm_plugin.evaluation import feeds
from logitnorm_plugin.evaluation.engine import evaluate


def _evaluate(detectors):
    torch.manual_seed(0)
    return evaluate({"tiny": tiny_net().eval()}, InMemoryBenchmark(), detectors=detectors,
                    batch_size=16, progress=False)


def test_a_detector_that_fails_to_score_is_named_among_the_others_of_its_pass():
    """knn(k=0) is built and fitted; scikit-learn refuses zero neighbours only at predict,
    inside the pass that also scores msp and mahalanobis."""
    with pytest.raises(DetectorScoreError) as caught:
        _evaluate(["msp", "mahalanobis", "knn(k=0)"])
    message = str(caught.value)
    assert message.startswith("the detector knn(k=0) failed to score the ID test set with "
                              "the model 'tiny' (ValueError: Expected n_neighbors > 0"), message
    assert "\n" not in message and "mahalanobis" not in message
    assert isinstance(caught.value.__cause__, ValueError)
    assert isinstance(caught.value, UserError)


def test_an_input_detector_with_a_setting_that_is_not_a_number_is_named():
    """ODIN with a string step: not fused into the shared pass (the engine's own ODIN code
    takes numbers), so ODIN's own predict fails, and that failure names it."""
    with pytest.raises(DetectorScoreError) as caught:
        _evaluate(["energy", "odin(eps='abc')"])
    assert str(caught.value).startswith(
        "the detector odin(eps=abc) failed to score the ID test set with the model 'tiny' "
        "(TypeError: ")
    assert isinstance(caught.value.__cause__, TypeError)


def test_a_detector_that_fails_to_fit_is_named_with_its_arguments_and_the_model():
    with pytest.raises(DetectorFitError) as caught:
        _evaluate(["msp", "knn(k=100000)"])
    message = str(caught.value)
    assert message.startswith("the detector knn(k=100000) could not be fitted on the "
                              "benchmark's training split with the model 'tiny' (ValueError: ")
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_failure_of_the_engines_own_code_around_a_fit_keeps_its_traceback():
    """A training pass that lost its features (a bug of ours, not of ReAct's arguments): the
    TypeError of our own code is not passed off as the detector's failure."""
    net = tiny_net().eval()
    feed, parts = feeds.plan(ReAct, {})
    assert feed.kind == feeds.BACKBONE and feed.fit_from == feeds.FEATURES
    react = feeds.build(ReAct, net, parts, "react")
    data = {"labels": torch.arange(10) % 5, "logits": torch.randn(10, 5)}  # no "features"
    with pytest.raises(TypeError) as caught:
        feeds.fit_all({"react": react}, {"react": feed}, lambda: None,
                      lambda train, maps: data, batch_size=4)
    assert not isinstance(caught.value, UserError)


def test_the_blame_names_only_what_the_detectors_own_call_raises():
    blame = feeds.Blame({"k": "knn(k=0)"}, "m", "the OOD set 'svhn'")

    def refuses(x):
        raise ValueError(f"no {x}")

    with pytest.raises(DetectorScoreError, match=r"^the detector knn\(k=0\) failed to score "
                       r"the OOD set 'svhn' with the model 'm' \(ValueError: no 3\)"):
        blame.score("k", refuses, 3)

    def buggy(x):
        raise KeyError(x)  # not one of FAULTS: a bug keeps its traceback

    with pytest.raises(KeyError):
        blame.score("k", buggy, 3)


def test_a_failure_on_an_ood_set_names_that_set():
    """The caller's detector instance scores the ID test set, then fails on the first OOD set
    (its own predict_logits refuses the batch, as a detector does with data it cannot take):
    the error names that OOD set, not the ID test set."""
    from pytorch_ood.detector import MaxSoftmax

    model = tiny_net().eval()
    detector = MaxSoftmax(model)
    calls = []
    own = detector.predict_logits

    def refuses_the_second(logits):
        calls.append(len(logits))
        if len(calls) == 2:
            raise RuntimeError("cannot take these logits")
        return own(logits)

    detector.predict_logits = refuses_the_second
    with pytest.raises(DetectorScoreError) as caught:
        evaluate({"tiny": model}, InMemoryBenchmark(), detectors=["energy", detector],
                 batch_size=16, progress=False)
    assert calls == [64, 24]  # the ID test set, then the first OOD set
    assert "failed to score the OOD set 'ood0' with the model 'tiny' (RuntimeError: cannot " \
           "take these logits)" in str(caught.value), str(caught.value)
    assert "energy" not in str(caught.value)


def test_odin_with_a_norm_std_the_input_cannot_take_is_named():
    """Four stds for three channels: not fused (the engine's ODIN code would fail as ours),
    so ODIN's own predict fails, and names it; one std per channel is still fused."""
    net = tiny_net().eval()
    good = feeds.build(ODIN, net, {"norm_std": (0.2, 0.2, 0.2)}, "odin")
    assert feeds.fusable(good, net, (0.25, 0.2, 0.3))
    bad = feeds.build(ODIN, net, {"norm_std": (1, 2, 3, 4)}, "odin")
    assert not feeds.fusable(bad, net, (0.25, 0.2, 0.3))
    with pytest.raises(DetectorScoreError) as caught:
        _evaluate(["odin(norm_std=(1, 2, 3, 4))"])
    assert str(caught.value).startswith(
        "the detector odin(norm_std=[1,2,3,4]) failed to score the ID test set with the model "
        "'tiny' (RuntimeError: ")


ALWAYS_FAILS = '''
import torch
from pytorch_ood.api import Detector, DetectorInfo, Paper, Task


class AlwaysFails(Detector):
    """Another package's detector whose scoring call refuses every input."""

    info = DetectorInfo(paper=Paper(title="Fails", venue="arXiv", year=2026,
                                    url="https://example.org"), tasks={Task.CLASSIFICATION})

    def __init__(self, model):
        super().__init__()
        self.model = model

    def fit(self, *args, **kwargs):
        return self

    def fit_features(self, *args, **kwargs):
        return self

    def predict(self, x):
        raise ValueError("refuses every input on purpose")

    def predict_features(self, x):
        raise ValueError("refuses every input on purpose")
'''


@pytest.mark.filterwarnings("ignore:AUTC is undefined:UserWarning")  # mc_dropout, no dropout
def test_detectors_all_leaves_out_a_detector_that_fails_to_score(run_dir, tmp_path,
                                                                 monkeypatch):
    """``--detectors all`` leaves out a detector whose scoring call fails (as it leaves out one
    that cannot be fitted), says so in the title and keeps the others; asked for by name, the
    same failure is the one-line error. A real dist-info on ``sys.path``."""
    import io

    from hostile import write_dist

    from logitnorm_plugin.registry import entry_points as registry
    from logitnorm_plugin.workflows import bench

    write_dist(tmp_path / "site", "failplug",
               "[pytorch_ood.detectors]\nalwaysfails = failplug_detector:AlwaysFails\n",
               {"failplug_detector": ALWAYS_FAILS})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry.refresh()
    kw = dict(models=[str(run_dir)], progress=False, plots=False)
    result = bench.run(detectors="all", out=tmp_path / "all", stdout=io.StringIO(), **kw)
    evaluated = {e["Detector"] for e in result["aggregate"]}
    assert "alwaysfails" not in evaluated and {"msp", "energy", "knn"} <= evaluated
    assert "alwaysfails (cannot score: the detector alwaysfails failed to score" in (
        result["markdown"]), result["markdown"]
    with pytest.raises(DetectorScoreError, match="refuses every input on purpose"):
        bench.run(detectors=["alwaysfails"], out=tmp_path / "one", stdout=io.StringIO(), **kw)
