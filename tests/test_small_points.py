"""Smaller first-hour points of issue 21 (point 8) that are not about one command's results."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("script", ["train_throughput.py", "eval_throughput.py"])
def test_throughput_script_on_cuda_without_cuda_is_one_line(script):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--device",
                           "cuda"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "CUDA is not available here" in done.stderr.strip().splitlines()[-1]
