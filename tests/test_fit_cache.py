"""The fit cache: a rerun (even with another detector) fits without a pass over the training
split; a file that fails its SHA-256, its recorded configuration or its recorded tensors is
recomputed with a warning, and nothing in it runs code."""

import hashlib
import json

import pytest
import torch
from host_detectors import Reads
from pytorch_ood.benchmark import Benchmark

from logitnorm_plugin._core.digests import state_dict_sha256
from logitnorm_plugin.evaluation.engine import evaluate
from logitnorm_plugin.evaluation.fit_cache import FOLDER, FitCache, pass_config
from logitnorm_plugin.evaluation.specs import ModelSpec
from logitnorm_plugin.models import DigitsCNN

FITTED = ["kl_matching", "mahalanobis", "react"]


class Bench(Benchmark):
    """60 training samples of 3 classes, 30 test samples, two OOD sets of 20; 8 x 8 images."""

    ood_names = ["a", "b"]

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(60) % 3
        self.train = Reads(torch.randn(60, 1, 8, 8, generator=g) + labels.view(-1, 1, 1, 1),
                           labels)
        self.id = Reads(torch.randn(30, 1, 8, 8, generator=g) + (torch.arange(30) % 3).view(
            -1, 1, 1, 1), torch.arange(30) % 3)
        self.oods = [Reads(torch.randn(20, 1, 8, 8, generator=g) * 3, torch.full((20,), -1))
                     for _ in self.ood_names]

    def train_set(self):
        return self.train

    def test_sets(self, known=True, unknown=True):
        return [self.id] if known and not unknown else list(self.oods)




@pytest.fixture
def model():
    torch.manual_seed(0)
    return DigitsCNN(3, 1, width=4).eval()


def run(model, bench, detectors, cache_dir, **kwargs):
    return evaluate({"m": model}, bench, detectors=detectors, batch_size=16, progress=False,
                    cache_dir=cache_dir, **kwargs)


def test_rerun_with_another_detector_reads_no_training_sample(model, tmp_path):
    bench = Bench()
    first = run(model, bench, FITTED, tmp_path)
    assert bench.train.reads == 60
    (data,) = (tmp_path / FOLDER).glob("*.pt")
    meta = json.loads(data.with_suffix(".json").read_text())
    assert meta["config"]["weights"] == state_dict_sha256(model)
    assert set(meta["tensors"]) == {"labels", "logits", "features"}
    assert meta["tensors"]["features"]["shape"] == [60, 16]

    bench = Bench()
    again = run(model, bench, [*FITTED, "knn", "vim", "gmm"], tmp_path)
    assert bench.train.reads == 0
    assert bench.id.reads == 30
    assert [r for r in again if r["Detector"] in FITTED] == first
    # and equal to fitting them from a pass, without the cache
    assert run(model, Bench(), [*FITTED, "knn", "vim", "gmm"], None) == again


def test_other_weights_or_other_training_data_are_other_files(model, tmp_path):
    run(model, Bench(), ["mahalanobis"], tmp_path)
    torch.manual_seed(1)
    other = DigitsCNN(3, 1, width=4).eval()
    bench = Bench()
    run(other, bench, ["mahalanobis"], tmp_path)
    assert bench.train.reads == 60
    bench = Bench()
    run(ModelSpec("m", model=model, mean=(0.1,), std=(0.9,)), bench, ["mahalanobis"], tmp_path)
    assert bench.train.reads == 60  # another normalisation of the training split
    assert len(list((tmp_path / FOLDER).glob("*.pt"))) == 3


def test_feature_maps_are_added_when_a_detector_needs_them(model, tmp_path):
    run(model, Bench(), ["mahalanobis"], tmp_path)
    bench = Bench()
    run(model, bench, ["mahalanobis", ("react", {"layer": "feature_maps"})], tmp_path)
    assert bench.train.reads == 60  # the cached pass has no maps: computed again, with them
    (data,) = (tmp_path / FOLDER).glob("*.pt")
    assert set(json.loads(data.with_suffix(".json").read_text())["tensors"]) == {
        "labels", "logits", "features", "maps"}
    bench = Bench()
    run(model, bench, ["mahalanobis", ("react", {"layer": "feature_maps"})], tmp_path)
    assert bench.train.reads == 0


def test_a_changed_file_is_recomputed_with_a_warning(model, tmp_path):
    first = run(model, Bench(), FITTED, tmp_path)
    (data,) = (tmp_path / FOLDER).glob("*.pt")
    payload = bytearray(data.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    data.write_bytes(bytes(payload))
    bench = Bench()
    with pytest.warns(UserWarning, match="SHA-256"):
        again = run(model, bench, FITTED, tmp_path)
    assert bench.train.reads == 60 and again == first
    bench = Bench()
    run(model, bench, FITTED, tmp_path)  # rewritten: read back silently
    assert bench.train.reads == 0


calls = []


def _called():
    calls.append("ran")
    return torch.zeros(3, dtype=torch.int64)


class Payload:
    def __reduce__(self):
        return _called, ()


def test_nothing_in_a_cache_file_runs_code(model, tmp_path):
    run(model, Bench(), ["mahalanobis"], tmp_path)
    (data,) = (tmp_path / FOLDER).glob("*.pt")
    torch.save({"labels": Payload()}, data)  # recorded SHA-256 updated: only the load refuses
    meta_path = data.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = hashlib.sha256(data.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    bench = Bench()
    with pytest.warns(UserWarning, match="cannot be read"):
        run(model, bench, ["mahalanobis"], tmp_path)
    assert calls == [] and bench.train.reads == 60


def test_recorded_shapes_and_configuration_are_checked(model, tmp_path):
    cache = FitCache(tmp_path)
    config = pass_config("w" * 64, {"benchmark": "x", "ood_names": ["a"]}, None, None, 4,
                         "split protocol", torch.device("cpu"))
    tensors = {"labels": torch.arange(4), "logits": torch.randn(4, 3),
               "features": torch.randn(4, 5)}
    cache.save(config, tensors)
    loaded = cache.load(config, ["labels", "features"])
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert cache.load(config, ["maps"]) is None  # not there: recomputed, no warning
    # the OOD set names do not change the training split's key
    assert cache.paths(config) == cache.paths(pass_config(
        "w" * 64, {"benchmark": "x", "ood_names": ["b"]}, None, None, 4, "split protocol",
        torch.device("cpu")))
    data, meta_path = cache.paths(config)
    meta = json.loads(meta_path.read_text())
    meta["tensors"]["features"]["shape"] = [4, 6]
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="does not hold the tensors"):
        assert cache.load(config, ["labels"]) is None
    meta["tensors"]["features"]["shape"] = [4, 5]
    meta["config"]["train"]["size"] = 5
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="another configuration"):
        assert cache.load(config, ["labels"]) is None


def test_without_a_cache_folder_nothing_is_written(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench = Bench()
    run(model, bench, FITTED, None)
    assert list(tmp_path.iterdir()) == []
    run(model, bench, FITTED, None)
    assert bench.train.reads == 120  # a pass each time
