"""``benchmarks/gpu_suite.py`` never rots: its smoke run on the CPU produces every part's
figures, and the entry points it writes for a checkout without an installed package are those
of the installed package."""

import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"


def _suite_module():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def test_written_entry_points_are_the_installed_ones(tmp_path):
    suite = _suite_module()
    info = suite.write_dist_info(tmp_path, REPO / "pyproject.toml")
    written = metadata.PathDistribution(info)
    installed = metadata.distribution("logitnorm-plugin")
    assert written.metadata["Name"] == installed.metadata["Name"]
    assert written.version == installed.version

    def points(dist):
        return {(e.group, e.name, e.value) for e in dist.entry_points}

    assert points(written) == points(installed)
    assert ("pytorch_ood.losses", "logitnorm", "logitnorm_plugin.loss:LogitNormLoss") in points(
        written)


@pytest.mark.slow
def test_smoke_run_on_the_cpu_has_every_part_with_numbers(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--smoke", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert (out / "gpu_suite.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "gpu_suite.json").read_text())
    parts = record["parts"]
    failed = {n: (p["status"], p.get("error"), p.get("log_tail", "")[-1500:])
              for n, p in parts.items() if p["status"] != "ok"}
    assert not failed, failed
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert set(parts) == {"train_throughput", "fast_path_resume", "eval_throughput", "bench",
                          "ddp", "objective_step", "concurrent_training"}
    assert {p["letter"] for p in parts.values()} == set("abcdefg")
    g = parts["concurrent_training"]["figures"]
    assert [r["k"] for r in g["runs"]] == [1, 2] and g["speedup"]["1"] == 1.0
    assert all(r["images_per_s"] > 0 for r in g["runs"])
    for key in ("device", "device_name", "torch", "python", "versions"):
        assert record[key], key
    assert record["smoke"] is True and _number(record["seconds"])

    a = parts["train_throughput"]["figures"]
    for key in ("original_style_images_per_s", "ours_images_per_s", "ratio", "compile_seconds"):
        assert _number(a[key]) and a[key] >= 0, (key, a)
    c = parts["eval_throughput"]["figures"]
    assert [s["suite"] for s in c["suites"]] == ["logits", "features"]
    for suite in c["suites"]:
        for key in ("pytorch_ood_seconds", "logitnorm_plugin_seconds", "speedup"):
            assert _number(suite[key]) and suite[key] > 0, (key, suite)
        assert _number(suite["max_metric_difference"])
        assert suite["max_metric_difference"] <= 1e-6
    b = parts["fast_path_resume"]["figures"]
    assert b["fast"]["killed_with"] == -9 and b["fast"]["checkpoint_epoch_at_kill"] == 1
    assert b["fast"]["resumed_from_epoch"] == 1 and b["fast"]["finished"] is True
    assert all(_number(v) for v in b["fast"]["train_images_per_second"])
    assert b["deterministic"]["equal"] is True and b["deterministic"]["max_abs_difference"] == 0
    d = parts["bench"]["figures"]
    assert d["returncode"] == 0 and _number(d["seconds"])
    assert len(d["table"]) == 10 and all(_number(r["AUROC"]) for r in d["table"])
    e = parts["ddp"]["figures"]
    assert e["torchrun"]["returncode"] == 0 and e["torchrun"]["world_size"] == 2
    assert e["torchrun"]["backend"] == "gloo" and e["torchrun"]["grad_stride_warning"] is False
    assert e["ddp_step"]["grad_stride_warning"] is False
    assert all(s["grad_strides_match_params"] and _number(s["loss"])
               for s in e["ddp_step"]["steps"].values())
    f = parts["objective_step"]["figures"]["c10"]
    assert set(f["step_ms"]) == {"logitnorm", "elogitnorm", "t2fnorm", "cross_entropy"}
    assert all(_number(v) and v > 0 for v in f["step_ms"].values())
    assert f["ratio_to_logitnorm"]["logitnorm"] == 1.0
    assert set(f["loss_only_ms"]) == set(f["step_ms"])
    assert all(_number(v) for d in f["distances"].values() for v in d.values())
    summary = (out / "gpu_suite.md").read_text()
    assert summary.startswith("# GPU suite:") and summary.count("| ok |") == len(parts) == 7
