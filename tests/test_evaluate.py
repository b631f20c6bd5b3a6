"""The evaluation engine: same numbers as pytorch-ood, fewer forward passes, resumable."""

import functools

import pytest
import torch
from memory_benchmark import MEAN, STD, InMemoryBenchmark, tiny_net
from pytorch_ood.detector import ODIN, EnergyBased, KLMatching, MaxLogit, MaxSoftmax
from torch.utils.data import TensorDataset

from logitnorm_plugin._core.conventions import ROW_KEYS
from logitnorm_plugin._core.errors import MissingDataError, UnknownNameError
from logitnorm_plugin.detector import LogitNormDetector
from logitnorm_plugin.evaluation.engine import evaluate
from logitnorm_plugin.evaluation.protocol import paper_subsample_indices
from logitnorm_plugin.evaluation.specs import ModelSpec, resolve_model
from logitnorm_plugin.metrics import PAPER_FPR_KEY, ood_metrics
from logitnorm_plugin.store.results import ResultStore

HOST_NAMES = {
    "MaxSoftmax": "msp",
    "EnergyBased": "energy",
    "MaxLogit": "maxlogit",
    "LogitNormDetector": "logitnorm",
    "ODIN": "odin",
}


class ForwardCounter:
    """Counts the samples a module's forward sees, per call."""

    def __init__(self, module):
        self.sizes = []
        module.register_forward_hook(lambda m, args, out: self.sizes.append(args[0].shape[0]))

    @property
    def samples(self):
        return sum(self.sizes)


@pytest.mark.parametrize("kind", ["tensors", "images"])
def test_metrics_equal_pytorch_ood_benchmark_evaluate(kind):
    bench = InMemoryBenchmark(kind=kind)
    model = tiny_net().eval()
    host_detectors = [
        MaxSoftmax(model), EnergyBased(model), MaxLogit(model), LogitNormDetector(model),
        ODIN(model, norm_std=list(STD)),
    ]
    # batch 16 divides the ID size: the host's ID + OOD batches hold the same samples as ours
    host = bench.evaluate(host_detectors, loader_kwargs={"batch_size": 16})
    ours = evaluate(
        [ModelSpec("tiny", model=model, mean=MEAN, std=STD)], bench,
        detectors=["msp", "energy", "maxlogit", "logitnorm", "odin"], batch_size=16,
        progress=False,
    )
    assert len(ours) == len(host) == 15
    by_cell = {(r["Detector"], r["Dataset"]): r for r in ours}
    for h in host:
        r = by_cell[(HOST_NAMES[h["Detector"]], h["Dataset"])]
        for key in ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "AUTC"):
            assert r[key] == pytest.approx(h[key], abs=1e-6), (h["Detector"], key)
        if "ACC" in h:
            assert r["ACC"] == pytest.approx(h["ACC"], abs=1e-6)
    for r in ours:
        assert set(ROW_KEYS) <= set(r)
        assert 0 <= r["ACC"] <= 1 and 0 <= r["ECE"] <= 1 and 0 <= r[PAPER_FPR_KEY] <= 1
    # ACC on every row, ODIN's included (the host has none there)
    assert {r["ACC"] for r in ours} == {ours[0]["ACC"]}


def test_forward_passes_once_per_dataset():
    n_id, n_ood = 64, (24, 40, 16)
    bench = InMemoryBenchmark(n_id, n_ood)
    model = tiny_net().eval()
    counter = ForwardCounter(model)
    logits_detectors = ["msp", "energy", "maxlogit", "logitnorm", "entropy"]  # K = 5, M = 3
    evaluate({"m": model}, bench, detectors=logits_detectors, batch_size=16, progress=False)
    assert counter.samples == n_id + sum(n_ood)  # ID once, each OOD set once

    counter.sizes.clear()
    evaluate({"m": model}, bench, detectors=[*logits_detectors, "odin"], batch_size=16,
             progress=False)
    # ODIN shares the forward pass and adds one forward of the perturbed inputs per set
    assert counter.samples == 2 * (n_id + sum(n_ood))

    counter.sizes.clear()
    host = [MaxSoftmax(model), EnergyBased(model), MaxLogit(model)]
    bench.evaluate(host, loader_kwargs={"batch_size": 16})
    assert counter.samples == len(n_ood) * n_id + sum(n_ood)  # the host: ID again per set


def test_detectors_that_need_fitting_are_fitted_on_the_train_set():
    bench = InMemoryBenchmark()
    model = tiny_net().eval()
    counter = ForwardCounter(model)
    rows = evaluate({"m": model}, bench, detectors=["msp", "kl_matching"], batch_size=16,
                    progress=False)
    # one pass over the train set (here the ID set again) for the fit, then ID + OOD once
    assert counter.samples == 64 + 64 + sum((24, 40, 16))
    kl = [r for r in rows if r["Detector"] == "kl_matching"]
    assert len(kl) == 3 and all(0 <= r["AUROC"] <= 1 for r in kl)
    # the same numbers as fitting the host detector by hand
    det = KLMatching(model)
    with torch.no_grad():
        logits = model(bench.id.tensors[0])
        det.fit_logits(logits, bench.id.tensors[1])
        id_scores = det.predict_logits(logits)
        ood = bench.oods[0].tensors[0]
        ood_scores = det.predict_logits(model(ood))
    expected = ood_metrics(torch.cat([id_scores, ood_scores]),
                           torch.cat([bench.id.tensors[1], -torch.ones(len(ood)).long()]))
    assert kl[0]["AUROC"] == pytest.approx(expected["AUROC"], abs=1e-6)


class _Counted(TensorDataset):
    reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)


def test_fits_read_the_training_split_only_once_before_any_test_set(monkeypatch):
    from logitnorm_plugin.evaluation import feeds

    bench = InMemoryBenchmark()
    g = torch.Generator().manual_seed(9)
    train = _Counted(torch.randn(50, 3, 8, 8, generator=g), torch.arange(50) % 5)
    bench.train_set = lambda: train
    bench.id = _Counted(*bench.id.tensors)
    bench.oods = [_Counted(*o.tensors) for o in bench.oods]
    model = tiny_net().eval()
    seen, fitted = [], {}
    original = feeds.fit_shared

    def spy(detector, feed, data, batch_size):
        seen.append((train.reads, bench.id.reads, [o.reads for o in bench.oods]))
        original(detector, feed, data, batch_size)
        fitted[type(detector).__name__] = detector

    monkeypatch.setattr(feeds, "fit_shared", spy)
    evaluate({"m": model}, bench, detectors=["msp", "kl_matching", "mahalanobis", "react"],
             batch_size=16, progress=False)
    # every fit: the training split read once (one shared pass), no test or OOD sample yet
    assert seen == [(50, 0, [0, 0, 0])] * 3
    assert (train.reads, bench.id.reads, [o.reads for o in bench.oods]) == (50, 64, [24, 40, 16])
    with torch.no_grad():  # fitted on the training split's features, not on a test set's
        z = model[:-1](train.tensors[0])
    means = torch.stack([z[train.tensors[1] == c].mean(0) for c in range(5)])
    torch.testing.assert_close(fitted["Mahalanobis"].mu, means)
    assert fitted["ReAct"].threshold == pytest.approx(float(z.flatten().quantile(0.9)), rel=1e-5)


def test_model_left_as_found_and_eval_mode_used():
    bench = InMemoryBenchmark()
    model = tiny_net()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = evaluate({"m": model}, bench, detectors=["msp", "odin"], batch_size=16,
                     progress=False)
    assert model.training  # training flag restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics untouched (eval mode)
        assert v.device.type == "cpu"
    # dropout off: a second run gives the same numbers
    second = evaluate({"m": model}, bench, detectors=["msp", "odin"], batch_size=16,
                      progress=False)
    assert first == second


def test_instances_classes_and_names_give_registry_names():
    bench = InMemoryBenchmark()
    model = tiny_net().eval()
    rows = evaluate({"m": model}, bench,
                    detectors=[MaxSoftmax(model), EnergyBased, ("odin", {"temperature": 10.0})],
                    batch_size=16, progress=False)
    assert [r["Detector"] for r in rows[::3]] == ["msp", "energy", "odin"]
    with pytest.raises(UnknownNameError, match="msp"):
        evaluate({"m": model}, bench, detectors=["mps"], progress=False)


def test_odin_norm_std_comes_from_the_model(monkeypatch):
    seen = []
    original = ODIN.__init__

    @functools.wraps(original)  # keeps the signature the engine inspects
    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("norm_std"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(ODIN, "__init__", spy)
    bench = InMemoryBenchmark()
    evaluate([ModelSpec("m", model=tiny_net().eval(), std=STD)], bench, detectors=["odin"],
             progress=False)
    assert seen == [list(STD)]
    assert isinstance(seen[0], list)


def test_store_skips_finished_cells_and_force_recomputes(tmp_path):
    bench = InMemoryBenchmark()
    model = tiny_net().eval()
    counter = ForwardCounter(model)
    db = tmp_path / "r.sqlite"
    first = evaluate({"m": model}, bench, detectors=["msp", "odin"], store=db, progress=False)
    with ResultStore(db) as store:
        assert store.count() == 6
        (run,) = store.runs()
        assert run["provenance"]["versions"]["pytorch-ood"]
        assert {r["run_id"] for r in store.rows(with_ids=True)} == {run["run_id"]}
    counter.sizes.clear()
    again = evaluate({"m": model}, bench, detectors=["msp", "odin"], store=db, progress=False)
    assert counter.samples == 0  # nothing recomputed, no forward pass at all
    assert again == first

    # one missing cell: ID forwarded again (its scores are needed) plus that one OOD set
    with ResultStore(db) as store:
        store._db.execute("DELETE FROM cells WHERE dataset = 'ood1' AND detector = 'msp'")
        store._db.commit()
    counter.sizes.clear()
    partial = evaluate({"m": model}, bench, detectors=["msp", "odin"], store=db,
                       progress=False)
    assert counter.samples == 64 + 40
    assert partial == first

    counter.sizes.clear()
    forced = evaluate({"m": model}, bench, detectors=["msp", "odin"], store=db, force=True,
                      progress=False)
    assert counter.samples == 2 * (64 + 24 + 40 + 16)
    assert forced == first


def test_other_weights_are_other_cells(tmp_path):
    bench = InMemoryBenchmark()
    db = tmp_path / "r.sqlite"
    evaluate({"m": tiny_net().eval()}, bench, detectors=["msp"], store=db, progress=False)
    torch.manual_seed(1)
    evaluate({"m": tiny_net().eval()}, bench, detectors=["msp"], store=db, progress=False)
    with ResultStore(db) as store:
        assert store.count() == 6  # same label, different weights: not mistaken for done


def test_paper_protocol_averages_subsamples_of_the_same_scores():
    bench = InMemoryBenchmark(n_id=100, n_ood=(60, 80))
    model = tiny_net().eval()
    counter = ForwardCounter(model)
    scores = {}
    rows = evaluate({"m": model}, bench, detectors=["msp"], protocol="paper", repetitions=4,
                    keep_scores=True, scores_out=scores, progress=False)
    assert counter.samples == 100 + 60 + 80  # no extra passes for the repetitions
    id_scores = scores[("m", "msp", "ID")]
    id_labels = bench.id.tensors[1]
    for row, n in zip(rows, (60, 80)):
        subsets = paper_subsample_indices(n, 100, repetitions=4, seed=0)
        assert all(len(s) == 20 for s in subsets)  # a fifth of the ID test set
        ood_scores = scores[("m", "msp", row["Dataset"])]
        runs = [
            ood_metrics(torch.cat([id_scores, ood_scores[s]]),
                        torch.cat([id_labels, -torch.ones(len(s)).long()]))
            for s in subsets
        ]
        for key in ("AUROC", PAPER_FPR_KEY, "FPR95TPR"):
            assert row[key] == pytest.approx(sum(r[key] for r in runs) / 4, abs=1e-12)
        assert row["Protocol"] == "paper"


def test_named_digits_benchmark_with_groups():
    from logitnorm_plugin.registry.architectures import build_model

    model = build_model("digits-cnn", num_classes=10, in_channels=1).eval()
    rows = evaluate(
        [ModelSpec("cnn", model=model, loss="cross_entropy", seed=0, arch="digits-cnn")],
        "digits", detectors=["msp", "energy"], progress=False,
    )
    assert {r["Dataset"] for r in rows} == {"rotated", "patches", "gaussian", "uniform"}
    assert {r["Group"] for r in rows if r["Dataset"] == "rotated"} == {"near"}
    assert {r["Group"] for r in rows if r["Dataset"] != "rotated"} == {"far"}
    assert {r["Benchmark"] for r in rows} == {"digits"}
    assert rows[0]["Loss"] == "cross_entropy" and rows[0]["Seed"] == 0


def test_named_cifar_benchmark_from_on_disk_fixtures(tmp_path):
    from fake_data import write_cifar, write_paper_ood_sets

    write_cifar(tmp_path, "cifar10", n_train=20, n_test=20)
    write_paper_ood_sets(tmp_path, n=6)
    model = tiny_net(classes=10).eval()
    rows = evaluate({"m": model}, "cifar10", detectors=["msp", "odin"], data_root=tmp_path,
                    protocol="paper", repetitions=2, progress=False)
    assert [r["Dataset"] for r in rows[:6]] == [
        "textures", "svhn", "places365", "lsun_crop", "lsun_resize", "isun"]
    assert all(0 <= r["AUROC"] <= 1 for r in rows)


def test_registry_key_uses_its_own_preprocessing(tmp_path, monkeypatch):
    from pytorch_ood.model import WideResNet
    from pytorch_ood.model.registry import get_model_info

    key = "wrn-40-2/cifar10/logitnorm/s0"
    entry = get_model_info(key)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingDataError) as info:  # offline and not cached: a clear error
        resolve_model(key)
    assert entry.file_name in str(info.value) and "--download" in str(info.value)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    # a pre-placed file is not downloaded (pytorch-ood checks the hash only on download)
    wrn = WideResNet(num_classes=10, depth=40, widen_factor=2)
    torch.nn.init.normal_(wrn.fc.weight, std=1e-3)  # else all-equal (saturated) MSP scores
    torch.save(wrn.state_dict(), checkpoints / entry.file_name)
    spec = resolve_model(key)
    assert (spec.loss, spec.seed, spec.arch, spec.t) == ("logitnorm", 0, "wrn-40-2", 0.04)
    assert spec.mean == tuple(entry.preprocessing.mean)
    assert spec.identity.startswith(f"pytorch-ood:{key}:")
    assert spec.model is None  # loaded only when a cell needs it

    class Cifarish(InMemoryBenchmark):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.id = TensorDataset(torch.randn(8, 3, 32, 32, generator=g),
                                    torch.arange(8) % 10)
            self.oods = [TensorDataset(torch.randn(4, 3, 32, 32, generator=g) * 2,
                                       -torch.ones(4).long())]
            self.ood_names = ["noise"]

    rows = evaluate([spec], Cifarish(), detectors=["msp"], progress=False)
    assert rows[0]["Model"] == key and rows[0]["Loss"] == "logitnorm"
    with pytest.raises(UnknownNameError):
        resolve_model("wrn-40-2/cifar10/logitnrom/s0")


def test_other_data_under_the_same_names_are_other_cells(tmp_path):
    db = tmp_path / "r.sqlite"
    model = tiny_net().eval()
    counter = ForwardCounter(model)
    evaluate({"m": model}, InMemoryBenchmark(n_ood=(24, 40, 16)), detectors=["msp"], store=db,
             progress=False)
    counter.sizes.clear()
    evaluate({"m": model}, InMemoryBenchmark(n_ood=(8, 8, 8)), detectors=["msp"], store=db,
             progress=False)
    assert counter.samples == 64 + 24  # recomputed, not read from the other data's cells
    with ResultStore(db) as store:
        assert store.count() == 6


def test_package_attribute_evaluate_is_the_engine():
    import logitnorm_plugin

    assert logitnorm_plugin.evaluate is evaluate
    rows = logitnorm_plugin.evaluate({"m": tiny_net().eval()}, InMemoryBenchmark(),
                                     detectors=["msp"], progress=False)
    assert [r["Dataset"] for r in rows] == ["ood0", "ood1", "ood2"]


class _SharperMSP(LogitNormDetector):
    """A detector under another name that declares the training-temperature parameter."""


class _NoDeclaration(MaxSoftmax):
    """Takes ``t`` but does not declare it as the training temperature."""


def test_training_t_goes_to_detectors_that_declare_it_whatever_their_name():
    model = tiny_net().eval()
    spec = ModelSpec(label="m", model=model, t=0.5)
    scores = {}
    rows = evaluate({"m": spec}, InMemoryBenchmark(), detectors=[_SharperMSP, _NoDeclaration],
                    progress=False, keep_scores=True, scores_out=scores)
    assert {r["Detector"] for r in rows} == {"_SharperMSP", "_NoDeclaration"}
    x = InMemoryBenchmark().test_sets(known=True, unknown=False)[0]
    logits = model(torch.stack([x[i][0] for i in range(len(x))]))
    expected = LogitNormDetector(None, t=0.5).predict_logits(logits)
    assert torch.allclose(scores[("m", "_SharperMSP", "ID")], expected, atol=1e-6)
    # no declaration: the detector keeps its own default (MSP's t=1), not the training t
    default = MaxSoftmax(None).predict_logits(logits)
    assert torch.allclose(scores[("m", "_NoDeclaration", "ID")], default, atol=1e-6)


def test_device_auto_picks_the_available_device():
    model = tiny_net().eval()
    rows = evaluate({"m": model}, InMemoryBenchmark(), detectors=["msp"], device="auto",
                    progress=False)
    expected = evaluate({"m": model}, InMemoryBenchmark(), detectors=["msp"], device="cpu",
                        progress=False)
    if not torch.cuda.is_available():
        assert rows == expected
    assert len(rows) == 3


@pytest.mark.parametrize("context", [torch.inference_mode, torch.no_grad])
@pytest.mark.parametrize("kind", ["tensors", "images"])
def test_odin_scores_under_inference_mode_equal_the_host_odin(context, kind):
    """pytorch-ood's ODIN leaves inference mode for its gradient (with a warning); the engine's
    fused ODIN does the same, and gives the host's per-sample scores."""
    bench = InMemoryBenchmark(n_id=32, n_ood=(16,), kind=kind)
    model = tiny_net().eval()
    scores = {}
    with context():
        evaluate([ModelSpec("tiny", model=model, mean=MEAN, std=STD)], bench,
                 detectors=["odin"], batch_size=16, progress=False, keep_scores=True,
                 scores_out=scores)
        host = ODIN(model, norm_std=list(STD))
        expected = {}
        for name, dataset in (("ID", bench.id), ("ood0", bench.oods[0])):
            x = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(len(dataset))])
            if context is torch.inference_mode:
                with pytest.warns(UserWarning, match="inference mode"):
                    expected[name] = host.predict(x)
            else:
                expected[name] = host.predict(x)
    for name, values in expected.items():
        ours = scores[("tiny", "odin", name)]
        assert ours.shape == values.shape
        assert torch.allclose(ours, values.float(), rtol=0, atol=1e-6), name


def test_odin_with_a_model_built_in_inference_mode_says_what_to_do():
    bench = InMemoryBenchmark(n_id=16, n_ood=(8,))
    with torch.inference_mode():
        model = tiny_net().eval()  # inference-tensor parameters: no autograd through them
        with pytest.raises(RuntimeError, match=r"create or move the model outside inference"):
            evaluate({"m": model}, bench, detectors=["odin"], batch_size=16, progress=False)


def test_registry_weights_that_fail_to_download_or_load_say_what_to_do(tmp_path, monkeypatch,
                                                                         offline):
    from pytorch_ood.model.registry import get_model_info

    from logitnorm_plugin._core.errors import CorruptDataError

    key = "wrn-40-2/cifar10/logitnorm/s0"
    entry = get_model_info(key)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / entry.file_name
    # offline with download=True: the download failed, from where, where to put the file
    with pytest.raises(MissingDataError) as info:
        resolve_model(key, download=True).get_model()
    msg = str(info.value)
    assert offline == [entry.url]
    assert msg.startswith(f"Downloading the weights of '{key}' from {entry.url} failed")
    assert str(cached) in msg and "--download" not in msg and "download=True" not in msg
    # a download whose hash differs is a failed download too
    import torch.hub

    def wrong_hash(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0000")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", wrong_hash)
    with pytest.raises(MissingDataError, match="invalid hash value"):
        resolve_model(key, download=True).get_model()
    # a damaged file in the cache is named, with what to do
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptDataError) as info:
        resolve_model(key).get_model()
    assert str(cached) in str(info.value) and "remove that file" in str(info.value)


def test_two_models_with_the_same_label_are_a_one_line_user_error():
    from logitnorm_plugin._core.errors import UserError
    from logitnorm_plugin.evaluation.specs import DuplicateModelLabelError, resolve_models

    specs = [ModelSpec("same", model=tiny_net()), ModelSpec("same", model=tiny_net()),
             ModelSpec("other", model=tiny_net())]
    with pytest.raises(DuplicateModelLabelError) as info:
        resolve_models(specs)
    msg = str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert msg.startswith("2 models have the label 'same'") and "\n" not in msg
    assert "dict {label: model}" in msg


def test_cli_bench_two_run_folders_with_the_same_key_is_one_line(tmp_path, capsys,
                                                                  monkeypatch):
    import shutil

    from logitnorm_plugin import cli
    from logitnorm_plugin.training.loop import train

    monkeypatch.chdir(tmp_path)
    train(dataset="digits", loss="cross_entropy", epochs=1, batch_size=256, out="runA",
          progress=False)
    shutil.copytree("runA", "runB")  # two folders, one model-card key: their folder names
    # become the labels (tests/test_first_hour.py); one label given to both is refused
    status = cli.main(["bench", "--models", "x=runA", "x=runB", "--detectors", "msp",
                       "--device", "cpu", "--no-progress", "--out", "res"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("logitnorm-ood bench: error: 2 models have the label ")
    assert str(tmp_path / "runA") in err and str(tmp_path / "runB") in err
    assert "Traceback" not in err and err.count("\n") == 1
