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


def test_create_detector_uses_the_training_temperature_of_a_loaded_model(tmp_path):
    import logitnorm_plugin as lp

    lp.train(loss_kwargs={"t": 0.16}, epochs=1, out=tmp_path / "run", progress=False)
    model = lp.load_trained(tmp_path / "run")
    assert model.training_t == 0.16
    assert lp.create_detector("logitnorm", model).t == 0.16
    assert lp.create_detector("logitnorm(t=0.04)", model).t == 0.04  # given: kept
    assert lp.create_detector("logitnorm", model, t=0.02).t == 0.02
    plain = torch.nn.Sequential(torch.nn.Linear(4, 3))  # carries no temperature: the default
    assert lp.create_detector("logitnorm", plain).t == 0.04


def test_saturated_msp_histograms_use_a_log_scale(tmp_path):
    import numpy as np

    from logitnorm_plugin.plots import histogram_scale, score_histograms

    rng = np.random.default_rng(0)
    id_scores = -1 + 10 ** rng.uniform(-7, -5, 500)    # a confident model: MSP ~ 1 - 1e-6
    ood_scores = -1 + 10 ** rng.uniform(-4, -2, 500)   # less confident on OOD
    label, transform = histogram_scale(np.concatenate([id_scores, ood_scores]))
    assert label == "log10(1 - MSP)"
    # on the raw scale 40 bins over [-1, 0] put almost all of both sets in one bin; on this
    # scale the two sets share no bin
    edges = np.linspace(-1, 0, 41)
    assert np.histogram(id_scores, edges)[0][0] == 500
    assert np.histogram(ood_scores, edges)[0][0] > 400
    t_id, t_ood = transform(id_scores), transform(ood_scores)
    assert t_id.max() < t_ood.min()
    path = score_histograms({"ln": {"ID": id_scores, "noise": ood_scores}}, tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # energy-like scores stay as they are
    assert histogram_scale(rng.normal(size=100) * 5)[1] is None


def test_bench_prints_one_line_per_run_and_epochs_with_verbose(tmp_path, capsys):
    from logitnorm_plugin.cli import main

    common = ["bench", "--epochs", "2", "--seeds", "0", "--losses", "cross_entropy",
              "--detectors", "msp", "--no-plots"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert err.count("bench: trained cross_entropy s0: 2 epochs") == 1 and " epoch 1/2" not in err
    assert main([*common, "--out", str(tmp_path / "b"), "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "train cross_entropy s0 epoch 1/2: " in err and "epoch 2/2: " in err


def test_list_rows_shipped_for_our_entries_equal_the_classes():
    """``list`` prints this distribution's rows from a shipped file (no pytorch-ood import);
    they must equal what the classes say (else: listing.write_descriptions())."""
    import json
    from importlib import metadata

    from logitnorm_plugin._core.registry_rows import DESCRIPTIONS_FILE, shipped_rows
    from logitnorm_plugin.registry import entry_points as registry
    from logitnorm_plugin.registry import listing

    for kind in registry.GROUPS:
        assert listing.describe(kind) == listing.describe(kind, shipped=False), (
            f"{DESCRIPTIONS_FILE.name} is stale: run listing.write_descriptions()")
    if json.loads(DESCRIPTIONS_FILE.read_text())["pytorch_ood"] == metadata.version(
            "pytorch-ood"):
        ours = [e for kind in registry.GROUPS for e in registry.entries(kind)
                if e.distribution == registry.THIS_DISTRIBUTION]
        assert len(shipped_rows()) == len(ours)


def test_list_imports_no_torch(tmp_path):
    probe = ("import sys; from logitnorm_plugin.cli import main; code = main(['list']); "
             "print('torch' in sys.modules, 'pytorch_ood' in sys.modules, file=sys.stderr); "
             "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "logitnorm" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "False False"
