"""The ``logitnorm-ood`` console script, run as a user runs it: through its installed entry."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


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
