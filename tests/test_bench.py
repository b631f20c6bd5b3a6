"""``logitnorm-ood bench``: outputs, resuming after an interruption, errors, published numbers."""

import csv
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from logitnorm_plugin._core.errors import UnknownNameError, UserError
from logitnorm_plugin.reporting import bench_output
from logitnorm_plugin.store.published import load_published, match_published
from logitnorm_plugin.store.results import ResultStore
from logitnorm_plugin.workflows import bench

evaluate_module = importlib.import_module("logitnorm_plugin.evaluation.engine")

METRICS = ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "FPR95-ID95", "ACC", "ECE")


def run_cli(*args, cwd, timeout=300):
    beside = Path(sys.executable).parent / "logitnorm-ood"
    script = str(beside) if beside.exists() else shutil.which("logitnorm-ood")
    assert script, "the console script logitnorm-ood is not installed"
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=dict(os.environ))


class SimulatedCrash(Exception):
    pass


def test_interrupted_bench_resumes_without_recomputing(tmp_path, monkeypatch):
    # logits detectors only: ODIN's extra passes are covered by the engine's tests
    kwargs = dict(out=tmp_path / "out", seeds=[0], epochs=1, detectors=["msp", "energy"],
                  progress=False, plots=False)
    total = 2 * 2 * 4  # losses x detectors x digits OOD sets
    stored = []
    original_put = ResultStore.put

    def crash_after_five(self, row, **kw):
        if len(stored) == 5:
            raise SimulatedCrash("killed midway")
        stored.append((row["Model"], row["Detector"], row["Dataset"]))
        return original_put(self, row, **kw)

    monkeypatch.setattr(ResultStore, "put", crash_after_five)
    with pytest.raises(SimulatedCrash):
        bench.run(**kwargs, stdout=io.StringIO())
    with ResultStore(tmp_path / "out" / "results.sqlite") as store:
        assert store.count() == 5  # every finished cell was committed

    recomputed, forwards = [], []
    original_forward = evaluate_module._forward_pass

    def counting_put(self, row, **kw):
        recomputed.append((row["Model"], row["Detector"], row["Dataset"]))
        return original_put(self, row, **kw)

    def counting_forward(*args, **kw):
        forwards.append(1)
        return original_forward(*args, **kw)

    monkeypatch.setattr(ResultStore, "put", counting_put)
    monkeypatch.setattr(evaluate_module, "_forward_pass", counting_forward)
    resumed = bench.run(**kwargs, stdout=io.StringIO())
    assert len(recomputed) == total - 5
    assert not set(recomputed) & set(stored)  # finished cells were not computed again
    assert len(resumed["rows"]) == total

    # a rerun of a finished benchmark computes nothing, not even a forward pass
    recomputed.clear()
    forwards.clear()
    again = bench.run(**kwargs, stdout=io.StringIO())
    assert recomputed == [] and forwards == []
    assert again["rows"] == resumed["rows"]

    # the uninterrupted result (every cell computed in one go, same models) is the same
    full = bench.run(**kwargs, force=True, stdout=io.StringIO())
    assert len(recomputed) == total
    for a, b in zip(full["rows"], resumed["rows"]):
        assert (a["Model"], a["Detector"], a["Dataset"]) == (b["Model"], b["Detector"],
                                                             b["Dataset"])
        for key in METRICS:
            assert a[key] == pytest.approx(b[key], abs=1e-12)
    assert full["table"] == resumed["table"]

    # the trained run folders evaluated by path (--models) give the same cells
    runs = sorted((tmp_path / "out" / "runs").iterdir())
    by_path = bench.run(models=[str(r) for r in runs], out=tmp_path / "by_path",
                        detectors=["msp", "energy"], progress=False, plots=False,
                        stdout=io.StringIO())
    key = {"cross_entropy": 0, "logitnorm": 1}
    ordered = sorted(by_path["rows"], key=lambda r: key[r["Loss"]])
    assert [r[m] for r in ordered for m in METRICS] == [r[m] for r in full["rows"]
                                                        for m in METRICS]


def test_cli_default_run_writes_every_output(tmp_path):
    # the default command with fewer epochs, seeds and detectors to keep the test short
    result = run_cli("bench", "--epochs", "1", "--seeds", "0", "--detectors", "msp,odin",
                     "--out", "res", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "res"
    for name in ("results.sqlite", "results.json", "results.csv", "table.md", "hist_msp.png",
                 "hist_odin.png"):
        assert (out / name).is_file(), name
    assert (out / "hist_msp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == 2 * 2 * 4  # losses x detectors x OOD sets
    assert data["provenance"]["versions"]["torch"]
    assert {r["Loss"] for r in data["rows"]} == {"cross_entropy", "logitnorm"}
    assert {r["Seed"] for r in data["rows"]} == {0}
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # the unit in the header: fractions (export's results_table.csv is in percent)
    assert len(rows) == 16 and "FPR95-ID95 (fraction)" in rows[0] and "ECE (fraction)" in rows[0]
    assert 0 <= float(rows[0]["AUROC (fraction)"]) <= 1
    table = (out / "table.md").read_text()
    for text in ("| cross_entropy | msp", "| logitnorm     | odin", "FPR95-ID95", "near/AUROC",
                 "run time"):
        assert text in table, text
    assert "| cross_entropy | msp" in result.stdout
    aggregate = {(e["Loss"], e["Detector"]): e for e in data["aggregate"]}
    assert aggregate[("logitnorm", "msp")]["Seeds"] == 1
    assert aggregate[("logitnorm", "msp")]["Datasets"] == 4


def test_cli_missing_data_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from logitnorm_plugin import cli

    empty = tmp_path / "nothing-here"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)
    status = cli.main(["bench", "--benchmark", "cifar10", "--data-root", str(empty), "--out",
                       "res"])
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("logitnorm-ood bench: error:")
    message = err.lower()
    assert "cifar" in message and str(empty).lower() in message
    assert "--download" in message
    assert not (tmp_path / "res" / "runs").exists()  # nothing trained


def test_unknown_names_fail_before_training(tmp_path):
    with pytest.raises(UnknownNameError, match="msp"):
        bench.run(out=tmp_path, detectors=["mps"], stdout=io.StringIO())
    with pytest.raises(UnknownNameError, match="logitnorm"):
        bench.run(out=tmp_path, losses=["logitnrom"], stdout=io.StringIO())
    assert not (tmp_path / "runs").exists()


def test_conflicting_temperatures_fail_before_any_model_trains(tmp_path):
    """--t with --t-from concerns the LogitNorm models, the last ones trained: the conflict is
    found while the configurations are resolved, before cross_entropy trains."""
    from logitnorm_plugin.training.recipes import tuned_t_record

    rec = tmp_path / "recommended_t.json"
    record = tuned_t_record()
    rec.write_text(json.dumps(record))
    with pytest.raises(UserError, match="either"):
        bench.run(out=tmp_path / "out", t=0.04, t_from=rec, stdout=io.StringIO())
    # a file that tune-t did not write is refused as well, before training too
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"chosen_t": 0.05}))
    with pytest.raises(UserError, match="chosen_t"):
        bench.run(out=tmp_path / "out", t_from=foreign, stdout=io.StringIO())
    assert not (tmp_path / "out" / "runs").exists()


def test_published_numbers_are_sourced_and_matched():
    published = load_published()
    assert published["entries"]
    for entry in published["entries"]:
        assert entry["source"] in published["sources"]
        assert 0 < entry["value"] <= 1
        # published AUPRs are average precision (the paper's AUPR-ID-AP), never pytorch-ood's
        # trapezoidal AUPR-IN
        assert entry["metric"] in ("AUROC", "FPR95-ID95", "AUPR-ID-AP", "ACC")
    hits = match_published("cifar10", "paper", "wrn-40-2", "cross_entropy", "msp")
    assert {(h["metric"], h["value"]) for h in hits} >= {("FPR95-ID95", 0.5104),
                                                         ("AUROC", 0.9090)}
    # another protocol, architecture or an unknown architecture: nothing
    assert not match_published("cifar10", "full", "wrn-40-2", "cross_entropy", "msp")
    assert not match_published("cifar10", "paper", "resnet18-32x32", "cross_entropy",
                                     "msp")
    assert not match_published("cifar10", "paper", None, "cross_entropy", "msp")
    assert not match_published("digits", "full", "digits-cnn", "logitnorm", "msp")
    openood = match_published("cifar10_openood", "full", "resnet18-32x32", "logitnorm",
                                    "msp")
    assert {h["scope"] for h in openood} == {"near", "far", "id"}

    summary = [{"Loss": "cross_entropy", "Detector": "msp", "Seeds": 3, "AUROC": 0.9,
                "AUROC_std": 0.01, "FPR95TPR": 0.3, "FPR95-ID95": 0.5, "ACC": 0.95}]
    table = bench_output.format_table(summary, ("Loss", "Detector"), (),
                               {("cross_entropy", "msp"): hits}, published["sources"])
    assert "Published" in table and "FPR95-ID95 51.04 [1]" in table
    assert "[1] energy_ood README" in table


def test_update_readme_rewrites_only_the_marked_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n\n{bench_output.README_START}\nold table\n"
                      f"{bench_output.README_END}\n\n## Later\n")
    bench_output.update_readme(readme, "# logitnorm-ood bench: digits\n\n| a |\n|---|\n| 1 |\n")
    text = readme.read_text()
    assert "old table" not in text
    assert text.startswith("# Title\n\nintro\n\n")
    assert "## logitnorm-ood bench: digits" in text and "| 1 |" in text
    start, end = bench_output.README_START, bench_output.README_END
    assert text.index(start) < text.index("| 1 |") < text.index(end)
    assert text.endswith(f"{bench_output.README_END}\n\n## Later\n")
    readme.write_text("no markers\n")
    with pytest.raises(UserError, match="needs the lines"):
        bench_output.update_readme(readme, "x")


def test_bench_fits_from_the_fit_cache_in_its_out_folder(tmp_path, monkeypatch):
    import torch

    from logitnorm_plugin.evaluation.fit_cache import FOLDER
    from logitnorm_plugin.evaluation.specs import ModelSpec, resolve_benchmark
    from logitnorm_plugin.models import DigitsCNN

    torch.manual_seed(0)
    spec = ModelSpec("cnn", model=DigitsCNN(10, 1, width=4).eval(), loss="cross_entropy")
    passes = []
    original_forward = evaluate_module._forward_pass

    def counting_forward(model, dataset, *args, **kw):
        passes.append(len(dataset))
        return original_forward(model, dataset, *args, **kw)

    monkeypatch.setattr(evaluate_module, "_forward_pass", counting_forward)
    kwargs = dict(models=[spec], detectors=["msp", "mahalanobis"], out=tmp_path / "out",
                  progress=False, plots=False, stdout=io.StringIO())
    first = bench.run(**kwargs)
    n_train = len(resolve_benchmark("digits").train_set())
    assert passes[0] == n_train and len(passes) == 1 + 1 + 4  # train, ID, four OOD sets
    assert len(list((tmp_path / "out" / FOLDER).glob("*.pt"))) == 1
    passes.clear()
    again = bench.run(**kwargs, force=True)
    assert len(passes) == 1 + 4 and n_train not in passes  # fitted from the cache
    assert again["rows"] == first["rows"]


@pytest.mark.filterwarnings("ignore:AUTC is undefined:UserWarning")  # mc_dropout, no dropout
def test_detectors_all_evaluates_every_registered_detector_the_model_can_take(tmp_path):
    """``--detectors all``: every registered detector, built through the model split, on a
    digits run folder; one that cannot be fitted to the model (SHE needs a correct training
    prediction in every class: an untrained model has none) is left out and the title says
    why; so are the feature detectors for a model that cannot be split."""
    import torch

    from logitnorm_plugin.registry.entry_points import list_detectors
    from logitnorm_plugin.training.loop import train

    run = train(dataset="digits", epochs=1, lr=1e-9, arch_kwargs={"width": 8},
                out=tmp_path / "run", progress=False)
    out = io.StringIO()
    result = bench.run(models=[str(run.run_dir)], detectors=["all"], out=tmp_path / "res",
                       progress=False, plots=False, stdout=out)
    evaluated = {e["Detector"] for e in result["aggregate"]}
    feature_based = {"mahalanobis", "knn", "vim", "react", "ash", "dice", "scale", "rankfeat"}
    assert feature_based <= evaluated
    assert evaluated | {"she"} == set(list_detectors())
    assert "she (cannot be fitted" in result["markdown"]
    assert "Left out of `--detectors all`" in out.getvalue()

    class NoLinearHead(torch.nn.Module):  # logits straight from a convolution
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 10, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    result = bench.run(models={"conv": NoLinearHead()}, detectors="all",
                       out=tmp_path / "conv", progress=False, plots=False,
                       stdout=io.StringIO())
    evaluated = {e["Detector"] for e in result["aggregate"]}
    assert {"msp", "energy", "odin", "logitnorm"} <= evaluated
    assert not feature_based & evaluated
    assert "mahalanobis (cannot be built: UnsupportedModelError" in result["markdown"]


def test_update_readme_writes_a_named_section(tmp_path):
    readme = tmp_path / "README.md"
    start, end = bench_output.readme_markers("all-detectors")
    readme.write_text(f"intro\n\n{bench_output.README_START}\nA\n{bench_output.README_END}\n\n"
                      f"{start}\nB\n{end}\n")
    bench_output.update_readme(readme, "| new |", section="all-detectors")
    text = readme.read_text()
    assert "\nA\n" in text and "\nB\n" not in text and "| new |" in text
    assert text.index(start) < text.index("| new |") < text.index(end)
    with pytest.raises(UserError, match="other-section"):
        bench_output.update_readme(readme, "x", section="other-section")
