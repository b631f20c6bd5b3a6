"""Issue 22 point 9: an empty output path (``--out ""``, ``out=""``) is refused in one line with
exit status 2 (a ``ValueError`` in Python), never taken as the current folder."""

import os

import pytest

from logitnorm_plugin._core.arg_checks import out_path
from logitnorm_plugin.cli import main
from logitnorm_plugin.reporting.export import export_results
from logitnorm_plugin.reporting.leaderboard import write_leaderboard
from logitnorm_plugin.reporting.report import write_report
from logitnorm_plugin.training.loop import train
from logitnorm_plugin.workflows.bench_request import BenchRequest
from logitnorm_plugin.workflows.tune_t import tune_t

SMALL = {"dataset": "digits", "arch_kwargs": {"width": 8}, "epochs": 1, "device": "cpu"}

COMMANDS = [
    ["train", "--dataset", "digits", "--arch-arg", "width=8", "--device", "cpu", "--epochs", "1",
     "--quiet"],
    ["train", "--dataset", "digits", "--device", "cpu", "--resume"],
    ["bench", "--losses", "logitnorm", "--seeds", "0", "--epochs", "1", "--device", "cpu",
     "--no-progress", "--no-plots"],
    ["tune-t", "--dataset", "digits", "--grid", "0.5", "--seeds", "0", "--epochs", "1",
     "--device", "cpu"],
    ["export", "RESULTS"],
    ["export", "RESULTS", "--format", "openood-leaderboard"],
    ["report", "RESULTS", "--no-figures"],
    ["upstream-patch"],
]


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    """An empty current folder: whatever lands in it was written into ``""``."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("empty", ["", "  "])
def test_cli_refuses_an_empty_out(argv, empty, empty_cwd, capsys):
    results = empty_cwd.parent / "results"  # need not exist: the path is checked first
    argv = [str(results) if a == "RESULTS" else a for a in argv]
    code = main([*argv, "--out", empty])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("logitnorm-ood")]
    assert len(lines) == 1 and "empty path" in lines[0] and "--out" in lines[0], err
    assert os.listdir(empty_cwd) == []


def test_python_refuses_an_empty_out(empty_cwd):
    results = empty_cwd.parent / "results"
    calls = [
        lambda: train(out="", **SMALL),
        lambda: BenchRequest(losses=("logitnorm",), seeds=(0,), out=""),
        lambda: tune_t(dataset="digits", grid=(0.5,), seeds=(0,), epochs=1, out="",
                       device="cpu"),
        lambda: export_results(results, out=""),
        lambda: write_leaderboard(results, out=""),
        lambda: write_report(results, out=""),
        lambda: out_path(""),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="empty path"):
            call()
    assert os.listdir(empty_cwd) == []
    assert str(out_path(".")) == "." and str(out_path("results")) == "results"
