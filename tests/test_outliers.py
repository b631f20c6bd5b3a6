"""Objectives trained with auxiliary outliers (``logitnorm_plugin.objectives``) and the outlier
sources (``logitnorm_plugin.data.outliers``): refusal without outliers, the published
mixed-batch losses, the seeded stream and resume, the digits source's disjointness from every
test OOD set, image folders and pytorch-ood's sets, and ``bench --losses``."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import fake_images, write_image_folder
from pytorch_ood.api import LossInfo, Representation, Task
from pytorch_ood.loss import EnergyRegularizedLoss, OutlierExposureLoss
from pytorch_ood.loss.crossentropy import cross_entropy
from torch import nn
from torch.nn import functional as F

from logitnorm_plugin._core.errors import MissingDataError, UnknownNameError, UserError
from logitnorm_plugin.cli import main as cli
from logitnorm_plugin.data.digits import (
    DIGITS_OOD,
    digits_arrays,
    digits_ood,
    digits_split_indices,
    load_digits_split,
)
from logitnorm_plugin.data.outliers import (
    DIGITS_JIGSAW_SIZE,
    JIGSAW_ORDERS,
    digits_jigsaw,
    jigsaw_plan,
    load_outliers,
    outliers_for,
    resolve_outlier_source,
)
from logitnorm_plugin.objectives import OutlierStream, mixed_batch_loss, needs_outliers
from logitnorm_plugin.training.config import OUTLIER_FIELDS, TrainConfig, resolve_config
from logitnorm_plugin.training.loop import train
from logitnorm_plugin.training.runs import load_trained, read_config
from logitnorm_plugin.workflows import bench

# a narrow digits CNN that learns something in 3 epochs (no warm-up, a larger lr)
QUICK = dict(dataset="digits", arch_kwargs={"width": 8}, epochs=3, lr=0.2, warmup_epochs=0,
             progress=False)




def _state(run):
    return torch.load(Path(run) / "model.pt", weights_only=True)


# -- which objective needs outliers; refusals ---------------------------------------------------


def test_needs_outliers_follows_loss_info_supervised():
    from logitnorm_plugin.registry.entry_points import get_loss_class

    need = {name: needs_outliers(get_loss_class(name)) for name in
            ("outlier_exposure", "energy_regularized", "entropic_open_set", "cross_entropy",
             "logitnorm")}
    assert need == {"outlier_exposure": True, "energy_regularized": True,
                    "entropic_open_set": True, "cross_entropy": False, "logitnorm": False}


@pytest.mark.parametrize("loss", ["outlier_exposure", "energy_regularized", "entropic_open_set"])
def test_objective_that_needs_outliers_is_refused_without_them_before_any_data_is_read(
        loss, tmp_path, monkeypatch):
    import logitnorm_plugin.data as data

    def no_reading(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(data, "load_split", no_reading)
    monkeypatch.setattr(data, "dataset_meta", no_reading)
    # the trainer opens its dataset once, through the name its configuration imported
    import logitnorm_plugin.training.config as train_config

    monkeypatch.setattr(train_config, "open_dataset", no_reading)
    with pytest.raises(UserError, match=f"loss '{loss}' is trained with auxiliary outliers"):
        train(loss=loss, out=tmp_path / "run", **QUICK)
    assert not (tmp_path / "run").exists()


def test_cli_refuses_outlier_exposure_without_outliers_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli(["train", "--dataset", "digits", "--device", "cpu", "--quiet",
                "--loss", "outlier_exposure", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "loss 'outlier_exposure' is trained with auxiliary outliers" in err
    assert "--outliers" in err and not out.exists()


def test_objective_without_outliers_refuses_them(tmp_path, capsys):
    code = cli(["train", "--dataset", "digits", "--device", "cpu", "--quiet", "--loss",
                "cross_entropy", "--outliers", "digits_jigsaw", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "loss 'cross_entropy' takes no outliers" in err
    with pytest.raises(UserError, match="takes no outliers"):
        resolve_config("digits", loss="logitnorm", outlier_ratio=2.0)


def test_outlier_sources_are_checked_by_name():
    assert resolve_outlier_source("Digits-Jigsaw", "digits") == "digits_jigsaw"
    with pytest.raises(UnknownNameError, match="Did you mean 'digits_jigsaw'"):
        resolve_outlier_source("digits_jigsw", "digits")
    for test_set in DIGITS_OOD:
        with pytest.raises(UserError, match="is a test OOD set"):
            resolve_outlier_source(test_set, "digits")
    with pytest.raises(UserError, match="serves only --dataset digits"):
        resolve_outlier_source("digits_jigsaw", "cifar10")
    with pytest.raises(MissingDataError, match="does not exist"):
        resolve_outlier_source("./no/such/folder", "digits")


# -- the configuration ---------------------------------------------------------------------------


def test_config_records_published_values_and_stays_unchanged_without_outliers():
    oe, cls = resolve_config("digits", loss="outlier_exposure", outliers="digits_jigsaw", seed=3)
    d = oe.to_dict()
    # Hendrycks et al.: 256 outliers per 128 ID images, weight 0.5; digits recipe batch 64
    assert (d["outliers"], d["outlier_ratio"], d["outlier_batch_size"], d["outlier_seed"]) == (
        "digits_jigsaw", 2.0, 128, 3)
    assert d["loss_kwargs"] == {"alpha": 0.5}
    energy, _ = resolve_config("digits", loss="energy_regularized", outliers="digits_jigsaw",
                               loss_kwargs={"alpha": 0.2}, outlier_ratio=1.5, batch_size=10)
    # Liu et al.: m_in -25, m_out -7, weight 0.1 (given values win)
    assert energy.loss_kwargs == {"alpha": 0.2, "margin_in": -25.0, "margin_out": -7.0}
    assert (energy.outlier_ratio, energy.outlier_batch_size) == (1.5, 15)
    # a run without outliers writes the config.json it always wrote: no outlier keys
    ce, _ = resolve_config("digits", loss="cross_entropy")
    assert not set(OUTLIER_FIELDS) & set(ce.to_dict())
    assert ce.outliers is None and ce.to_dict().get("outliers") is None
    with pytest.raises(UserError):
        TrainConfig(**{**ce.to_dict(), "outlier_ratio": 2.0})
    with pytest.raises(UserError, match="outlier seed"):
        TrainConfig(**{**d, "outlier_seed": -1})


# -- the mixed-batch loss -----------------------------------------------------------------------


def _mixed(n=4, m=8, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n + m, c, generator=g) * 3).requires_grad_()
    labels = torch.randint(0, c, (n,), generator=g)
    return logits, labels, torch.cat([labels, torch.full((m,), -1)])


def test_outlier_exposure_loss_is_the_published_one():
    logits, labels, target = _mixed()
    got = mixed_batch_loss(OutlierExposureLoss())(logits, labels)
    # Hendrycks et al. 2019: CE over the ID rows + 0.5 x the cross-entropy of the outliers'
    # softmax to the uniform distribution, each averaged over its own rows
    out = logits[4:]
    uniform = -(F.log_softmax(out, dim=1).mean(dim=1)).mean()
    paper = F.cross_entropy(logits[:4], labels) + 0.5 * uniform
    per_sample = OutlierExposureLoss(reduction="none")(logits, target)
    torch.testing.assert_close(got, paper)
    torch.testing.assert_close(got, per_sample[:4].mean() + per_sample[4:].mean())
    # pytorch-ood's "mean" averages over the mixed batch: another weighting of the two terms
    assert not torch.allclose(OutlierExposureLoss()(logits, target), paper)
    (grad,) = torch.autograd.grad(got, logits)
    (ref,) = torch.autograd.grad(paper, logits)
    torch.testing.assert_close(grad, ref)


def test_energy_regularized_loss_matches_pytorch_ood():
    logits, labels, target = _mixed(seed=1)
    loss = EnergyRegularizedLoss()
    got = mixed_batch_loss(loss)(logits, labels)
    torch.testing.assert_close(got, loss(logits, target))
    energy = -torch.logsumexp(logits, dim=1)
    paper = F.cross_entropy(logits[:4], labels) + 0.1 * (
        F.relu(energy[:4] + 25).pow(2).mean() + F.relu(-7 - energy[4:]).pow(2).mean())
    torch.testing.assert_close(got, paper)


@pytest.mark.parametrize("loss", [OutlierExposureLoss(), EnergyRegularizedLoss()])
def test_published_losses_need_no_tensor_values(loss):
    """On the meta device nothing has a value: a loss that runs there never asks the device
    for one (no host synchronisation), while pytorch-ood's masks by label values do."""
    logits = torch.empty(12, 5, device="meta")
    labels = torch.empty(4, dtype=torch.int64, device="meta")
    assert mixed_batch_loss(loss)(logits, labels).shape == ()
    with pytest.raises(RuntimeError):
        loss(logits, torch.cat([labels, torch.full((8,), -1, device="meta")]))


class RecordingOutlierLoss(nn.Module):
    """A third-party objective that takes outliers: called as it is on the mixed batch."""

    info = LossInfo(tasks={Task.CLASSIFICATION}, inputs={Representation.LOGITS},
                    supervised=True)
    targets = []

    def forward(self, logits, target):
        type(self).targets.append(target.clone())
        return cross_entropy(logits, target)


def test_other_objectives_see_id_labels_then_minus_one(tmp_path):
    RecordingOutlierLoss.targets.clear()
    result = train(loss=RecordingOutlierLoss, outliers="digits_jigsaw", out=tmp_path / "r",
                   **{**QUICK, "epochs": 1})
    config = read_config(result)
    assert config["outlier_ratio"] == 1.0 and config["outlier_batch_size"] == 64
    assert len(RecordingOutlierLoss.targets) == result.metrics[0]["steps"] == 20
    for target in RecordingOutlierLoss.targets:
        n = len(target) - 64  # the ID images (41 in the last step), then 64 outliers
        assert n in (64, 41)
        assert ((target[:n] >= 0) & (target[:n] < 10)).all() and (target[n:] == -1).all()


# -- training with outliers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("outlier-runs")
    runs = {"cross_entropy": train(loss="cross_entropy", out=root / "ce", **QUICK)}
    for loss in ("outlier_exposure", "energy_regularized"):
        runs[loss] = train(loss=loss, outliers="digits_jigsaw", out=root / loss, **QUICK)
    return runs


def _scores(run):
    model = load_trained(run).eval()
    outliers = digits_jigsaw(n=1000, seed=12345)  # other outliers than the training ones
    test = load_digits_split("test")
    with torch.no_grad():
        z_out = model(outliers.normalize(outliers.images))
        z_in = model(test.normalize(test.images))
    return {
        "msp_out": z_out.softmax(1).max(1).values.mean().item(),
        # energy = -logsumexp: mean energy of the outliers minus that of the test digits
        "energy_gap": (torch.logsumexp(z_in, 1).mean() - torch.logsumexp(z_out, 1).mean()).item(),
    }


def test_outlier_exposure_trains_another_model_than_cross_entropy(trained):
    ce, oe = trained["cross_entropy"], trained["outlier_exposure"]
    config = read_config(oe)
    assert config["outliers"] == "digits_jigsaw" and config["outlier_batch_size"] == 128
    a, b = _state(ce), _state(oe)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same seed, other weights
    # the outliers were used: OE lowers the confidence on (unseen) outliers
    assert _scores(oe)["msp_out"] < _scores(ce)["msp_out"] - 0.1
    assert oe.final_accuracy > 0.75


def test_energy_regularized_opens_an_energy_gap(trained):
    ce, energy = trained["cross_entropy"], trained["energy_regularized"]
    assert read_config(energy)["loss_kwargs"] == {"alpha": 0.1, "margin_in": -25.0,
                                                  "margin_out": -7.0}
    a, b = _state(ce), _state(energy)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # m_in pushes ID energies below -25, m_out keeps the outliers' above -7
    assert _scores(energy)["energy_gap"] > 6 and _scores(ce)["energy_gap"] < 3


def test_resume_continues_the_outlier_stream(tmp_path):
    kwargs = dict(loss="outlier_exposure", outliers="digits_jigsaw", deterministic=True,
                  **{**QUICK, "epochs": 2})
    whole = train(out=tmp_path / "whole", **kwargs)

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    with pytest.raises(Stop):
        train(out=tmp_path / "resumed", callback=stop, **kwargs)
    resumed = train(out=tmp_path / "resumed", resume=True, **kwargs)
    assert resumed.resumed_from_epoch == 1
    a, b = _state(whole), _state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # resuming with another outlier seed is another run
    with pytest.raises(UserError, match="outlier_seed"):
        train(out=tmp_path / "resumed", resume=True, outlier_seed=7, **kwargs)


def test_outlier_stream_is_a_function_of_seed_and_global_step():
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1)
    stream = OutlierStream(images, batch_size=8, seed=3)
    whole = stream.indices(0, 20)
    assert torch.equal(whole, torch.cat([stream.indices(0, 7), stream.indices(7, 13)]))
    assert torch.equal(OutlierStream(images, 8, 3).indices(7, 13), whole[7:])  # fresh object
    # positions 0..49 are one permutation of the set, 50..99 the next, another one
    flat = whole.flatten()
    assert sorted(flat[:50].tolist()) == list(range(50))
    assert sorted(flat[50:100].tolist()) == list(range(50))
    assert not torch.equal(flat[:50], flat[50:100])
    assert not torch.equal(OutlierStream(images, 8, 4).indices(0, 20), whole)
    # two processes: the union of their step batches is the one-process batch
    ranks = [OutlierStream(images, 8, 3, rank=r, world_size=2).indices(0, 20) for r in (0, 1)]
    assert torch.equal(torch.cat(ranks, dim=1), whole)
    stream.start_epoch(7, 13)
    assert torch.equal(stream.batch(0).flatten().long(), whole[7])
    with pytest.raises(UserError, match="divisible"):
        OutlierStream(images, 9, 0, rank=0, world_size=2)


# -- the digits' named source ------------------------------------------------------------------


def _keys(images):
    return {bytes(x) for x in images.reshape(len(images), -1).numpy()}


def _symmetries(images):
    out = []
    for flipped in (images, images.flip(-1)):
        out += [torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4)]
    return torch.cat(out)


def _reorder(img, order):
    q = [img[:4, :4], img[:4, 4:], img[4:, :4], img[4:, 4:]]
    return torch.cat([torch.cat([q[order[0]], q[order[1]]], 1),
                      torch.cat([q[order[2]], q[order[3]]], 1)], 0)


def test_digits_jigsaw_is_disjoint_from_every_test_ood_set():
    images, _ = digits_arrays()
    test = images[torch.from_numpy(digits_split_indices("test"))]
    forbidden = _keys(_symmetries(test))  # test digits, turned and mirrored in every way
    for name in DIGITS_OOD:
        for seed in (0, 1, 2):
            forbidden |= _keys(digits_ood(name, seed=seed).images)
    for seed in (0, 1, 2):
        for split in ("train_full", "train"):
            jigsaw = digits_jigsaw(seed=seed, split=split, split_seed=seed)
            assert len(jigsaw) == DIGITS_JIGSAW_SIZE and (jigsaw.labels == -1).all()
            assert not _keys(jigsaw.images) & forbidden
    # test digits never feed the generator: every source digit is a training digit
    assert not set(digits_split_indices("train_full")) & set(digits_split_indices("test"))


def test_digits_jigsaw_is_reordered_training_digits_never_turned():
    pool = load_digits_split("train_full").images[:, 0]
    jigsaw = digits_jigsaw(n=300, seed=5).images[:, 0]
    for i, img in enumerate(jigsaw):
        for attempt in range(8):  # the first arrangement that is no symmetry of its digit
            src, order = jigsaw_plan(5, i, len(pool), attempt)
            made = _reorder(pool[src], JIGSAW_ORDERS[order])
            if not _keys(made[None]) & _keys(_symmetries(pool[src][None])):
                break
        assert torch.equal(made, img), i
        assert JIGSAW_ORDERS[order] != (0, 1, 2, 3)
        assert not _keys(img[None]) & _keys(_symmetries(pool[src][None]))
    # the digits' 17 grey levels, image i a function of (seed, i) only
    assert set(jigsaw.unique().tolist()) <= {round(k * 255 / 16) for k in range(17)}
    assert torch.equal(digits_jigsaw(n=100, seed=5).images[:, 0], jigsaw[:100])
    assert not torch.equal(digits_jigsaw(n=100, seed=6).images[:, 0], jigsaw[:100])


# -- image folders and pytorch-ood's sets --------------------------------------------------------


@pytest.mark.parametrize("classes", [None, ("a", "b")])
def test_image_folder_outliers_take_the_id_shape(tmp_path, classes):
    folder = write_image_folder(tmp_path / "ood", classes=classes, n_per_class=3, size=(20, 24))
    ds = load_outliers(str(folder), "digits", root=tmp_path / "root")
    n = 3 * (len(classes) if classes else 1)
    assert ds.images.shape == (n, 1, 8, 8) and ds.images.dtype == torch.uint8
    assert (ds.labels == -1).all() and ds.mean == (0.3056,)
    assert set(ds.images.unique().tolist()) <= {round(k * 255 / 16) for k in range(17)}
    rgb = load_outliers(str(folder), "cifar10", root=tmp_path / "root")
    assert rgb.images.shape == (n, 3, 32, 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError, match="holds no images"):
        load_outliers(str(empty), "digits", root=tmp_path / "root")


def test_train_with_an_image_folder(tmp_path):
    folder = write_image_folder(tmp_path / "ood", classes=None, n_per_class=12, size=(16, 16))
    result = train(loss="outlier_exposure", outliers=str(folder), out=tmp_path / "run",
                   **{**QUICK, "epochs": 1})
    assert read_config(result)["outliers"] == str(folder.resolve())


def test_pytorch_ood_sets_are_looked_up_never_downloaded(tmp_path):
    root = tmp_path / "data"
    for name, path in (("tinyimages300k", "300K_random_images.npy"),
                       ("tinyimagenet", "tiny-imagenet-200")):
        with pytest.raises(MissingDataError) as err:
            load_outliers(name, "cifar10", root=root)
        assert str(root / path) in str(err.value) and "--download" in str(err.value)
    assert not root.exists()
    root.mkdir()
    np.save(root / "300K_random_images.npy", fake_images([0, 1, 2] * 4, (32, 32)))
    tiny = load_outliers("tinyimages300k", "digits", root=root)
    assert tiny.images.shape == (12, 1, 8, 8) and (tiny.labels == -1).all()
    assert load_outliers("tinyimages300k", "cifar10", root=root).images.shape == (12, 3, 32, 32)
    write_image_folder(root / "tiny-imagenet-200" / "train" / "n01", classes=("images",),
                       n_per_class=5, size=(64, 64), fmt="JPEG")
    assert load_outliers("tinyimagenet", "cifar10", root=root).images.shape == (5, 3, 32, 32)


# -- bench and list ------------------------------------------------------------------------------


def test_bench_trains_outlier_exposure_with_the_digits_source(tmp_path):
    from logitnorm_plugin.registry.entry_points import get_loss_class

    assert bench.DEFAULTS["losses"] == ("cross_entropy", "logitnorm")  # the default is unchanged
    out = tmp_path / "out"
    result = bench.run(losses=["cross_entropy", "outlier_exposure"], seeds=[0], epochs=1,
                       detectors=["msp"], out=out, progress=False, plots=False,
                       stdout=io.StringIO())
    assert {r["Loss"] for r in result["rows"]} == {"cross_entropy", "outlier_exposure"}
    oe_run = out / "runs" / "digits-outlier_exposure-s0"
    assert json.loads((oe_run / "bench_request.json").read_text())["outliers"] == "digits_jigsaw"
    assert read_config(oe_run)["outliers"] == "digits_jigsaw"
    ce_run = out / "runs" / "digits-cross_entropy-s0"
    assert "outliers" not in json.loads((ce_run / "bench_request.json").read_text())
    assert "outliers" not in read_config(ce_run)
    # --outliers overrides the named source, for the objectives that need outliers only
    oe = get_loss_class("outlier_exposure")
    assert outliers_for(oe, "outlier_exposure", "digits", "/data/x") == "/data/x"
    assert outliers_for(get_loss_class("logitnorm"), "logitnorm", "digits", "/data/x") is None
    with pytest.raises(UserError, match="has no named outlier source"):
        outliers_for(oe, "outlier_exposure", "/some/folder")


def test_list_losses_says_which_need_outliers(capsys):
    assert cli(["list", "losses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["NAME", "CLASS", "DISTRIBUTION", "PAPER", "NOTES"]
    rows = {line.split()[0]: line for line in lines[2:]}
    for name in ("outlier_exposure", "energy_regularized"):
        assert rows[name].endswith("needs outliers (--outliers), 2 per ID image")
    assert "outliers" not in rows["cross_entropy"] and "outliers" not in rows["logitnorm"]
