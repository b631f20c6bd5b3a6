"""The ``logitnorm-ood`` console script, run as a user runs it: through its installed entry."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def console_script() -> str:
    """The installed ``logitnorm-ood`` next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "logitnorm-ood"
    found = str(beside) if beside.exists() else shutil.which("logitnorm-ood")
    assert found, "the console script logitnorm-ood is not installed"
    return found


def run_cli(*args, cwd=None, env=None, timeout=300):
    merged = dict(os.environ, **(env or {}))
    return subprocess.run(
        [console_script(), *args], capture_output=True, text=True, cwd=cwd, env=merged,
        timeout=timeout,
    )


def test_list_losses_and_detectors(tmp_path):
    result = run_cli("list", "losses", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pytorch_ood.losses")
    assert lines[1].split() == ["NAME", "CLASS", "DISTRIBUTION", "PAPER", "NOTES"]
    row = next(line for line in lines if line.startswith("logitnorm "))
    assert "logitnorm_plugin.loss.LogitNormLoss" in row
    assert "logitnorm-plugin" in row and "Logit Normalization (ICML 2022)" in row
    result = run_cli("list", "detectors", "--filter", "o*", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[2:]]
    assert names == ["odin", "openmax"]
    assert "needs fit" in result.stdout and "gradients" in result.stdout


def test_list_everything_by_default(tmp_path):
    result = run_cli("list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for group in ("pytorch_ood.losses", "pytorch_ood.detectors", "pytorch_ood.benchmarks"):
        assert group in result.stdout


@pytest.mark.parametrize("args", [("list", "gizmos"), ("frobnicate",)])
def test_bad_arguments_exit_2_without_traceback(args, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid choice" in result.stderr


def test_no_arguments_prints_help(tmp_path):
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 0
    assert "list" in result.stdout and "bench" in result.stdout


def test_main_can_run_list_twice_in_one_process(capsys):
    from logitnorm_plugin import cli

    assert cli.main(["list", "losses"]) == 0
    assert cli.main(["list", "losses"]) == 0  # the submodule cli.list must not shadow list()
    assert capsys.readouterr().out.count("pytorch_ood.losses") == 2


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["bench", "--batch-size", "0"], "the batch size must be >= 1, got 0"),
        (["bench", "--batch-size", "-3"], "the batch size must be >= 1, got -3"),
        (["train", "--batch-size", "0", "--epochs", "1"], "the batch size must be >= 1, got 0"),
        (["train", "--epochs", "0"], "the number of epochs must be >= 1, got 0"),
        (["train", "--lr", "0"], "the learning rate must be > 0, got 0.0"),
        (["tune-t", "--batch-size", "0"], "the batch size must be >= 1, got 0"),
    ],
)
def test_bad_sizes_are_one_line_with_exit_2(argv, expected, tmp_path, capsys, monkeypatch):
    from logitnorm_plugin import cli

    monkeypatch.chdir(tmp_path)
    status = cli.main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err == f"logitnorm-ood {argv[0]}: error: {expected}\n"
    assert not (tmp_path / "out" / "runs").exists()  # failed before any training


def test_library_evaluate_refuses_batch_size_0():
    from logitnorm_plugin.evaluation.engine import evaluate

    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        evaluate({"m": torch.nn.Linear(64, 10)}, "digits", batch_size=0, progress=False)


def test_offline_download_says_the_download_failed(tmp_path, capsys, monkeypatch, offline):
    from logitnorm_plugin import cli

    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)
    status = cli.main(["bench", "--benchmark", "cifar10", "--data-root", str(empty),
                       "--download", "--out", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert status == 2, err
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert err.startswith(f"logitnorm-ood bench: error: Downloading dataset 'cifar10' from {url}")
    assert "failed" in err and str(empty) in err and err.count("\n") == 1
    assert "--download" not in err and "download=True" not in err
    assert offline  # the download was attempted
