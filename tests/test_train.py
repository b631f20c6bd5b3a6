"""The trainer on CPU with the digits: resume, fault injection, model cards, errors, outputs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import logitnorm_plugin
from logitnorm_plugin._core import atomic
from logitnorm_plugin._core.errors import (
    ConfigMismatchError,
    ModelIntegrityError,
    TrainingDivergedError,
    UserError,
)
from logitnorm_plugin.cli import main as cli
from logitnorm_plugin.cli._args import key_values as parse_loss_args
from logitnorm_plugin.training.loop import train
from logitnorm_plugin.training.recipes import DIGITS_T
from logitnorm_plugin.training.runs import (
    CHECKPOINT_FILE,
    load_trained,
    model_entry,
    read_card,
    read_metrics,
    sha256_file,
)
from logitnorm_plugin.training.step import TrainStep, _sync_free_loss

# small and quick: a narrow digits CNN, 3 epochs of the digits recipe
SMALL = dict(dataset="digits", arch_kwargs={"width": 8}, epochs=3, progress=False)
CLI_SMALL = ["--dataset", "digits", "--device", "cpu", "--quiet"]




@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """3 deterministic epochs in one go."""
    out = tmp_path_factory.mktemp("ref") / "run"
    return train(out=out, deterministic=True, **SMALL)


def _state(path):
    return torch.load(Path(path) / "model.pt", weights_only=True)


def _assert_same_weights(a, b):
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


def _without_time(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_images_per_second")}
            for r in records]


class _Stop(Exception):
    pass


def test_resume_after_two_epochs_is_bit_for_bit(reference, tmp_path):
    out = tmp_path / "run"

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise _Stop  # a kill right after the epoch-2 checkpoint

    with pytest.raises(_Stop):
        train(out=out, deterministic=True, callback=stop_after_two, **SMALL)
    ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 2 and not (out / "model.pt").exists()
    assert len(read_metrics(out)) == 2

    result = train(out=out, deterministic=True, resume=True, **SMALL)
    assert result.resumed_from_epoch == 2
    _assert_same_weights(reference, result)
    assert _without_time(read_metrics(out)) == _without_time(read_metrics(reference))
    assert result.card["sha256"] == reference.card["sha256"]


def test_interrupted_checkpoint_write_keeps_the_previous_one(reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace
    writes = {"n": 0}

    def replace_failing_on_second_checkpoint(src, dst):
        if Path(dst).name == CHECKPOINT_FILE:
            writes["n"] += 1
            if writes["n"] == 2:  # the data is written and fsynced; the rename never happens
                raise OSError("injected: power lost between write and rename")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_failing_on_second_checkpoint)
    with pytest.raises(OSError, match="injected"):
        train(out=out, deterministic=True, **SMALL)
    monkeypatch.setattr(atomic.os, "replace", real_replace)

    # the epoch-1 checkpoint is intact and no temporary file is left behind
    ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json",
                                                     "metrics.jsonl"]
    assert [r["epoch"] for r in read_metrics(out)] == [1]

    result = train(out=out, deterministic=True, resume=True, **SMALL)
    assert result.resumed_from_epoch == 1
    _assert_same_weights(reference, result)


def test_run_folder_contents_and_metrics(reference):
    out = reference.run_dir
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "checkpoint.pt", "metrics.jsonl", "model.pt", "model.json",
            "logit_norm.png"} <= names
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        for key in ("train_loss", "train_accuracy", "test_accuracy", "lr", "seconds",
                    "logit_norm_mean", "logit_norm_std"):
            assert isinstance(r[key], float) and r[key] == r[key], key
        assert 0 <= r["test_accuracy"] <= 1 and r["logit_norm_std"] >= 0
    # lr at each epoch start: the digits recipe's 3-epoch warm-up (20 steps per epoch) times
    # a cosine over the 3 epochs
    from logitnorm_plugin.training.step import lr_factor as _lr_factor

    config = json.loads((out / "config.json").read_text())
    factor = _lr_factor(config, 20)
    assert [r["lr"] for r in records] == pytest.approx([0.05 * factor(20 * k) for k in range(3)])
    assert records[0]["lr"] == pytest.approx(0.05 / 60)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert config["epochs"] == 3 and config["recipe"] == "digits"
    assert config["loss_kwargs"] == {"t": DIGITS_T}
    assert config["runtime"]["deterministic"] is True
    assert config["runtime"]["compile_mode"] is None and config["amp"] is None
    assert (out / "logit_norm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_card_fields_sha_and_round_trip(reference):
    card = read_card(reference.run_dir)
    for field in ("key", "arch_class", "arch_kwargs", "url", "sha256", "arch", "dataset",
                  "loss", "seed", "preprocessing", "metrics", "source", "description"):
        assert field in card, field
    assert card["key"] == "digits-cnn/digits/logitnorm/s0"
    assert (card["arch"], card["dataset"], card["loss"], card["seed"]) == (
        "digits-cnn", "digits", "logitnorm", "s0"
    )
    assert card["arch_class"] == "logitnorm_plugin.models.DigitsCNN"
    assert card["arch_kwargs"]["width"] == 8 and card["arch_kwargs"]["num_classes"] == 10
    assert card["sha256"] == sha256_file(reference.model_path)
    assert card["preprocessing"]["size"] == [8, 8] and len(card["preprocessing"]["mean"]) == 1
    records = read_metrics(reference.run_dir)
    assert card["metrics"]["final_accuracy"] == records[-1]["test_accuracy"]
    assert card["metrics"]["best_accuracy"] == max(r["test_accuracy"] for r in records)
    assert "'digits' recipe" in card["description"]
    assert f"t={DIGITS_T:g}" in card["description"]
    assert card["t"] == DIGITS_T and f"{DIGITS_T:g}" in card["t_source"]
    assert card["source"] == "https://arxiv.org/abs/2205.09310"
    prov = card["provenance"]
    assert prov["versions"]["torch"] and prov["device"].startswith("cpu")
    assert card["wall_time_s"] > 0

    model, same = load_trained(reference, return_card=True)
    assert same == card and not model.training
    # the rebuilt model reproduces the recorded test accuracy
    from logitnorm_plugin.data import load_split

    test = load_split("digits", "test")
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test.batches(256))
    assert correct / len(test) == pytest.approx(card["metrics"]["final_accuracy"])
    # also through model.json, and as pytorch-ood's registry record
    load_trained(reference.card_path)
    entry = model_entry(reference.run_dir, url="https://example.org/m.pt")
    assert entry.key == card["key"] and entry.file_name.endswith(card["sha256"][:16] + ".pt")
    assert entry.preprocessing.mean == tuple(card["preprocessing"]["mean"])


def test_tampered_model_file_is_refused(reference, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(reference.run_dir, copy)
    state = _state(copy)
    first = next(iter(state))
    state[first] = state[first] + 1
    torch.save(state, copy / "model.pt")
    with pytest.raises(ModelIntegrityError, match="SHA-256") as info:
        load_trained(copy)
    assert "refusing" in str(info.value)
    assert isinstance(info.value, UserError)


def test_public_train_is_the_training_function():
    import logitnorm_plugin.training.loop as module

    assert logitnorm_plugin.train is module.train is train
    assert logitnorm_plugin.load_trained is load_trained


class ExplodingLoss(nn.Module):
    """Cross-entropy that turns NaN from its ``after``-th call on."""

    def __init__(self, after: int = 25):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, logits, target):
        self.calls += 1
        loss = F.cross_entropy(logits, target)
        return loss * float("nan") if self.calls > self.after else loss


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    # the digits recipe: 1,257 images in batches of 64 -> 20 steps per epoch
    with pytest.raises(TrainingDivergedError) as info:
        train(out=out, loss=ExplodingLoss, loss_kwargs={"after": 25}, **SMALL)
    message = str(info.value)
    assert "epoch 2, step 6 of 20" in message and "global step 26" in message
    assert "last good checkpoint (epoch 1)" in message
    ckpt = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (out / "model.json").exists()


def test_nan_found_mid_epoch_with_check_every(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 3 of 20"):
        train(out=tmp_path / "r", loss=ExplodingLoss, loss_kwargs={"after": 2}, check_every=5,
              **SMALL)
    assert not (tmp_path / "r" / CHECKPOINT_FILE).exists()


def test_t_from_recommended_file(tmp_path):
    rec = tmp_path / "recommended_t.json"
    rec.write_text(json.dumps({"format": "logitnorm-plugin/recommended-t", "format_version": 1,
                               "chosen_t": 0.1, "candidates": [0.01, 0.1]}))
    result = train(out=tmp_path / "run", t_from=rec, **{**SMALL, "epochs": 1})
    card = result.card
    assert card["t"] == 0.1 and card["config"]["loss_kwargs"] == {"t": 0.1}
    assert card["t_from"] == str(rec.resolve())
    assert str(rec.resolve()) in card["description"]
    with pytest.raises(UserError, match="either"):
        train(out=tmp_path / "x", t_from=rec, loss_kwargs={"t": 0.2}, **SMALL)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(UserError, match="chosen_t"):
        train(out=tmp_path / "y", t_from=bad, **SMALL)


def test_sync_free_cross_entropy_matches_pytorch_ood():
    from pytorch_ood.loss import CrossEntropyLoss

    logits, target = torch.randn(32, 10), torch.randint(0, 10, (32,))
    for reduction in ("mean", "sum", "none"):
        host = CrossEntropyLoss(reduction=reduction)
        ours = _sync_free_loss(host)
        assert ours is not host
        assert torch.allclose(ours(logits, target), host(logits, target))
    other = nn.MSELoss()
    assert _sync_free_loss(other) is other


def test_train_step_accumulates_on_device_and_spots_nan():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(model, ExplodingLoss(after=3), opt, normalize=lambda x: x.float() / 255)
    images = torch.randint(0, 256, (8, 1, 2, 2), dtype=torch.uint8)
    labels = torch.randint(0, 3, (8,))
    for _ in range(5):
        step(images, labels)
    assert step.first_bad_step() == 4
    stats = step.collect()
    assert stats["count"] == 40 and stats["loss"] != stats["loss"]  # NaN summed in
    step.reset()
    assert step.first_bad_step() is None


def test_lr_schedules_match_their_definitions():
    from logitnorm_plugin.training.step import lr_factor as _lr_factor

    base = {"lr": 0.1, "epochs": 10, "gamma": 0.1, "milestones": [3, 6], "lr_min": 1e-6,
            "warmup_epochs": 0}
    steps = 7
    # multistep per epoch, as torch's MultiStepLR stepped once per epoch
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 6], gamma=0.1)
    multistep = _lr_factor({**base, "schedule": "multistep"}, steps)
    for epoch in range(10):
        for i in range(steps):
            assert 0.1 * multistep(epoch * steps + i) == pytest.approx(ref.get_last_lr()[0])
        opt.step()
        ref.step()
    # per-iteration cosine from lr to lr_min (OpenOOD's form)
    cosine = _lr_factor({**base, "schedule": "cosine"}, steps)
    assert cosine(0) == 1.0 and 0.1 * cosine(70) == pytest.approx(1e-6)
    assert cosine(35) == pytest.approx(0.5 + 0.5 * 1e-5)
    # linear warm-up multiplies in
    warm = _lr_factor({**base, "schedule": "constant", "warmup_epochs": 2}, steps)
    assert [warm(s) for s in (0, 6, 13, 14, 50)] == pytest.approx([1 / 14, 0.5, 1, 1, 1])


def test_fast_path_defaults():
    from logitnorm_plugin.training.step import compile_mode as _compile_mode
    from logitnorm_plugin.training.step import fast_path_defaults

    cpu = fast_path_defaults("cpu")
    assert cpu == {"amp_dtype": None, "channels_last": False, "compile_mode": None}
    forced = fast_path_defaults("cpu", amp="bf16", compile=True, channels_last=True)
    assert forced == {"amp_dtype": torch.bfloat16, "channels_last": True,
                      "compile_mode": "default"}
    cuda = torch.device("cuda")
    assert _compile_mode(None, cuda, 1, False) == "reduce-overhead"  # CUDA graphs
    assert _compile_mode(None, cuda, 4, False) == "default"  # DDP
    assert _compile_mode(None, cuda, 1, True) is None  # deterministic
    assert _compile_mode("max-autotune", cuda, 1, False) == "max-autotune"
    with pytest.raises(UserError, match="amp"):
        fast_path_defaults("cpu", amp="fp8")


def test_parse_loss_args():
    assert parse_loss_args(["t=0.04", "reduction=mean", "flag=true", "k=3"]) == {
        "t": 0.04, "reduction": "mean", "flag": True, "k": 3
    }
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_loss_args(["t0.04"])


# --- the command line: clear errors, exit status 2, no traceback -----------------------------


def _cli_error(capsys, *argv):
    code = cli(["train", *CLI_SMALL, *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--dataset", "cifar1"], "Unknown dataset 'cifar1'. Did you mean 'cifar10'?"),
        (["--arch", "wrn-40-3"], "Unknown architecture 'wrn-40-3'. Did you mean 'wrn-40-2'?"),
        (["--loss", "logitnrm"], "Unknown loss 'logitnrm'. Did you mean 'logitnorm'?"),
        (["--recipe", "papr"], "Unknown recipe 'papr'. Did you mean 'paper'?"),
        (["--loss-arg", "t=-1"], "temperature t must be finite and > 0"),
    ],
)
def test_cli_unknown_names(capsys, tmp_path, argv, expected):
    err = _cli_error(capsys, "--out", str(tmp_path / "run"), *argv)
    assert expected in err
    assert not (tmp_path / "run").exists()  # nothing written before the inputs are valid


def test_cli_missing_cifar_names_path_and_download(capsys, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    err = _cli_error(capsys, "--dataset", "cifar10", "--data-root", str(root),
                     "--arch", "digits-cnn", "--out", str(tmp_path / "run"))
    assert str(root) in err and "--download" in err
    assert not (tmp_path / "run").exists()


def test_cli_default_device_is_auto_and_falls_back_to_cpu(capsys, tmp_path):
    """The README's plain `logitnorm-ood train --dataset digits ...` (no --device) must run on
    a machine without CUDA."""
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--quiet", "--epochs", "1", "--out", str(out)]
    assert cli(argv) == 0
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert read_card(out)["provenance"]["device"].startswith(expected)


def test_cli_resume_with_other_config_and_existing_run(capsys, tmp_path):
    out = str(tmp_path / "run")
    small = ["--epochs", "1", "--out", out]
    assert cli(["train", *CLI_SMALL, *small, "--loss", "cross_entropy"]) == 0
    capsys.readouterr()
    err = _cli_error(capsys, *small, "--resume", "--loss", "cross_entropy", "--lr", "0.2")
    assert "Differing keys" in err and "lr: run folder has 0.05, now 0.2" in err
    err = _cli_error(capsys, *small, "--resume", "--loss", "logitnorm")
    assert "loss: run folder has 'cross_entropy', now 'logitnorm'" in err
    err = _cli_error(capsys, *small, "--loss", "cross_entropy")
    assert "already holds a training run" in err and "--resume" in err
    # the same arguments resume (here: nothing left to do, the outputs are rewritten)
    assert cli(["train", *CLI_SMALL, *small, "--resume", "--loss", "cross_entropy"]) == 0
    assert isinstance(ConfigMismatchError("x"), UserError)


def test_cli_nan_loss_through_console_script(tmp_path):
    """The installed ``logitnorm-ood`` script: a huge lr makes cross-entropy diverge."""
    script = Path(sys.executable).parent / "logitnorm-ood"
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(script), "train", *CLI_SMALL, "--loss", "cross_entropy", "--lr", "1e12",
         "--epochs", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "training diverged: the loss became NaN or infinite at epoch 1, step" in proc.stderr
    assert "No checkpoint was written" in proc.stderr


def test_openood_recipe_keeps_best_validation_epoch_on_fake_cifar(tmp_path):
    """CIFAR reader, 3-channel crop + flip, the val split and best-validation selection."""
    from fake_data import write_cifar

    write_cifar(tmp_path / "data", "cifar10", n_train=80, n_test=20)
    result = train(
        dataset="cifar10", data_root=tmp_path / "data", recipe="openood", arch="digits-cnn",
        arch_kwargs={"width": 4}, epochs=3, batch_size=16, out=tmp_path / "run",
        progress=False,
    )
    records = result.metrics
    assert all("val_accuracy" in r for r in records)
    best = max(records, key=lambda r: r["val_accuracy"])  # first of equal maxima
    card = result.card
    assert card["kept_epoch"] == best["epoch"]
    assert card["metrics"]["final_accuracy"] == best["test_accuracy"]
    assert "best-validation epoch kept" in card["description"]
    config = card["config"]
    assert (config["nesterov"], config["schedule"], config["train_split"]) == (
        True, "cosine", "train"
    )
    assert config["loss_kwargs"] == {"t": 0.04} and card["preprocessing"]["size"] == [32, 32]
    # 70 training images (80 minus 1 of 8 per class held out), batch 16 -> 5 steps
    assert all(r["steps"] == 5 for r in records)
    model = load_trained(result)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_plot_overlays_runs(reference, tmp_path):
    from logitnorm_plugin.plots import plot_logit_norms, run_label
    from logitnorm_plugin.training.runs import read_config, read_metrics

    assert run_label(read_config(reference.run_dir)) == f"logitnorm (t={DIGITS_T:g}), s0"
    history = read_metrics(reference.run_dir)
    png = plot_logit_norms([history, history], tmp_path / "n.png", labels=["a", "b"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="labels"):
        plot_logit_norms([history], tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(ValueError, match="at least one run"):
        plot_logit_norms([], tmp_path / "y.png")


def test_eval_split_val_keeps_the_test_split_unseen(tmp_path):
    from logitnorm_plugin.data import load_split

    result = train(out=tmp_path / "run", eval_split="val", train_split="train",
                   **{**SMALL, "epochs": 1})
    assert result.card["config"]["eval_split"] == "val"
    model = load_trained(result)
    val = load_split("digits", "val")
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in val.batches(256))
    assert result.final_accuracy == pytest.approx(correct / len(val))
    with pytest.raises(UserError, match="train_split='train'"):
        train(out=tmp_path / "x", eval_split="val", **SMALL)


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read the checkpoint"):
        train(out=out, resume=True, **SMALL)
