"""The first hour of a new user, one test per stumbling block: model labels of ``bench
--models``, ``--threads`` everywhere, progress output that names what runs, ``val acc`` in
tuning runs, the ``list`` pattern, seeds with commas or spaces, the ``report`` default folder,
no "± 0.00" for one seed, full paper titles, and the CI script's sanity line."""

import io
import math
import re
from pathlib import Path

import pytest
import torch
from pytorch_ood.model.registry import get_model_info

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin._core.tables import mean_std, pct, plural
from logitnorm_plugin.cli import main
from logitnorm_plugin.training.loop import train
from logitnorm_plugin.workflows import bench
from logitnorm_plugin.workflows import tune_t as tuning
from logitnorm_plugin.workflows.model_labels import model_specs

TINY = dict(dataset="digits", arch_kwargs={"width": 8}, epochs=1, device="cpu")




@pytest.fixture(scope="module")
def two_temperatures(tmp_path_factory):
    """Two runs of one architecture, loss and seed: the same model-card key."""
    root = tmp_path_factory.mktemp("runs")
    for name, t in (("ln-a", 0.04), ("ln-b", 0.1)):
        train(loss="logitnorm", loss_kwargs={"t": t}, out=root / name, progress=False, **TINY)
    return root


# -- bench --models: unique labels, LABEL=SPEC ----------------------------------------------------


def test_bench_models_of_one_key_get_folder_labels_and_a_row_each(two_temperatures, capsys):
    a, b = two_temperatures / "ln-a", two_temperatures / "ln-b"
    assert [s.label for s in model_specs([str(a), str(b)])] == ["ln-a", "ln-b"]
    out = two_temperatures / "results"
    code = main(["bench", "--models", str(a), str(b), "--detectors", "msp", "--out", str(out),
                 "--no-plots", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = captured.out
    assert "| Model | Loss      | Detector | Seeds |" in table
    assert re.search(r"\| ln-a +\| logitnorm \| msp +\| 1 +\|", table)
    assert re.search(r"\| ln-b +\| logitnorm \| msp +\| 1 +\|", table)
    assert "±" not in table.split("\n\n")[1]  # one model per row: no standard deviation
    assert "2 models," in table and "t = 0.04, 0.1" in table


def test_bench_models_take_label_equals_spec(two_temperatures, tmp_path, monkeypatch):
    a, b = two_temperatures / "ln-a", two_temperatures / "ln-b"
    specs = model_specs([f"t0.04={a}", f"t0.1={b}"])
    assert [s.label for s in specs] == ["t0.04", "t0.1"]
    assert [s.t for s in specs] == [0.04, 0.1]
    # a registry key with a label; the weights are read only when a cell needs them
    key = "wrn-40-2/cifar10/logitnorm/s0"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / get_model_info(key).file_name).write_bytes(b"not read here")
    (spec,) = model_specs([f"reference={key}"])
    assert spec.label == "reference" and spec.source == "registry" and spec.model is None
    # the same thing twice cannot be told apart: a one-line error that says what to do
    with pytest.raises(UserError, match="LABEL=SPEC"):
        model_specs([key, key])
    with pytest.raises(UserError, match="LABEL=SPEC"):
        model_specs([f"x={a}", f"x={b}"])


# -- --threads: one rule for train, bench and tune-t ----------------------------------------------


@pytest.mark.parametrize("given, expected", [("auto", 1), ("2", 2)])
def test_train_threads_follow_the_one_rule(monkeypatch, given, expected):
    import logitnorm_plugin.training.loop as training

    seen = []

    class Result:
        card = {"key": "k", "metrics": {"final_accuracy": 1.0, "best_accuracy": 1.0},
                "wall_time_s": 0.0}
        run_dir = "x"

    def fake_run_training(request):
        assert request.dataset == "digits" and request.device == "cpu"  # one TrainRequest
        seen.append(torch.get_num_threads())
        return Result()

    monkeypatch.setattr(training, "run_training", fake_run_training)
    torch.set_num_threads(3)
    try:
        assert main(["train", "--dataset", "digits", "--device", "cpu", "--threads", given]) == 0
        assert seen == [expected] and torch.get_num_threads() == 3  # restored afterwards
    finally:
        torch.set_num_threads(1)


def test_tune_t_threads_and_seed_lists(monkeypatch, tmp_path):
    import logitnorm_plugin.workflows.tune_t as tuning_module

    calls = []
    monkeypatch.setattr(tuning_module, "tune_t", lambda **kw: calls.append(kw))
    for seeds in (["0,1,2"], ["0", "1", "2"]):
        assert main(["tune-t", "--seeds", *seeds, "--grid", "0.04", "0.08", "--out",
                     str(tmp_path)]) == 0
    assert [c["seeds"] for c in calls] == [[0, 1, 2], [0, 1, 2]]
    assert [c["grid"] for c in calls] == [[0.04, 0.08], [0.04, 0.08]]
    assert calls[0]["threads"] == "auto"


def test_bench_seeds_with_commas_or_spaces(monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "run",
                        lambda request, **kw: calls.append(request) or {"markdown": ""})
    assert main(["bench", "--seeds", "0,1,2"]) == 0
    assert main(["bench", "--seeds", "0", "1", "2"]) == 0
    assert [c.seeds for c in calls] == [(0, 1, 2), (0, 1, 2)]


# -- progress: what runs is named; tuning runs say "val acc"; bench says what it reused -----------


def test_tune_t_progress_names_the_run_and_says_val_acc(tmp_path, capsys):
    torch.set_num_threads(2)
    seen = []
    try:
        tuning.tune_t(dataset="digits", grid=[0.1], epochs=1, seeds=[0], device="cpu",
                      noise_n=100, out=tmp_path, stdout=False, threads=1,
                      callback=lambda point: seen.append(torch.get_num_threads()))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    err = capsys.readouterr().err
    epoch_lines = [line for line in err.splitlines() if " epoch 1/1: " in line]
    assert epoch_lines and all(line.startswith("train logitnorm t=0.1 s0 epoch 1/1: ")
                               for line in epoch_lines)
    assert "val acc" in epoch_lines[0] and "test acc" not in err


def test_bench_names_runs_and_says_what_it_reused(tmp_path, capsys):
    kwargs = dict(losses=["cross_entropy"], seeds=[0], epochs=1, detectors=["msp"],
                  out=tmp_path / "out", plots=False, device="cpu")
    first = bench.run(**kwargs, stdout=io.StringIO())
    err = capsys.readouterr().err
    # one line per trained model by default; the epochs with progress="epochs" (--verbose)
    assert "bench: trained cross_entropy s0: 1 epochs, " in err and " epoch 1/1" not in err
    assert (f"bench: reused 0 of 1 trained model from {tmp_path / 'out' / 'runs'}, 0 of 4 "
            f"cells from {tmp_path / 'out' / 'results.sqlite'}; 4 to evaluate on cpu") in err
    assert "evaluate cross_entropy/s0: 4 of 4 cells to compute" in err  # no terminal: a line
    assert "1 model," in first["markdown"] and "1 models" not in first["markdown"]
    assert "±" not in first["table"]  # one seed: the mean alone
    bench.run(**kwargs, stdout=io.StringIO())
    err = capsys.readouterr().err
    assert " epoch " not in err  # nothing trained again
    assert "bench: reused 1 of 1 trained model from " in err
    assert "4 of 4 cells from " in err and "0 to evaluate" in err


def test_one_value_has_no_standard_deviation():
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert pct(mean, std) == "50.00"
    assert pct(*mean_std([0.5, 0.7])) == "60.00 ± 14.14"
    assert plural(1, "model") == "1 model" and plural(2, "model") == "2 models"
    assert plural(0, "OOD set") == "0 OOD sets"


# -- list, report --------------------------------------------------------------------------------


def test_list_takes_the_pattern_positionally_and_shows_full_titles(capsys):
    from logitnorm_plugin.registry.entry_points import list_detectors

    assert main(["list", "detectors", "m*"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names == list_detectors("m*") and {"maxlogit", "mc_dropout", "msp"} <= set(names)
    assert all(name.startswith("m") for name in names)
    assert "Representing Model Uncertainty in Deep Learning (ICML 2016)" in out
    assert "..." not in out
    assert main(["list", "m*"]) == 0  # twice in one process, too
    out = capsys.readouterr().out
    assert f"pytorch_ood.detectors ({len(names)})" in out and "pytorch_ood.losses (0)" in out
    assert main(["list", "detector"]) == 2  # a mistyped kind is not a pattern
    assert "invalid choice: 'detector'" in capsys.readouterr().err
    assert main(["list", "detectors", "m*", "--filter", "o*"]) == 2


def test_report_defaults_to_results_like_export(monkeypatch):
    import logitnorm_plugin.reporting.report as report

    seen = []

    class Report:
        path, figures, notes = "r.md", [], []

    monkeypatch.setattr(report, "write_report",
                        lambda results_dir, **kw: seen.append(results_dir) or Report())
    assert main(["report"]) == 0
    assert seen == ["results"]


# -- the CI script -------------------------------------------------------------------------------


def test_ci_sanity_line_imports_the_installed_package():
    script = Path(__file__).resolve().parents[1] / ".ci" / "run"
    text = script.read_text(encoding="utf-8")
    assert "three commands" not in text
    for line in text.splitlines():
        if "python -c" in line and not line.lstrip().startswith("#"):
            # run from another directory: `python -c` puts the working directory first
            assert re.match(r"^\(cd [^ ]+ && python -c ", line.strip()), line


def test_mean_std_of_values_with_nan_is_undefined_not_an_error():
    # pytorch-ood's AUTC is NaN for constant scores; one such seed makes the aggregate NaN
    mean, std = mean_std([0.5, float("nan"), 0.7])
    assert math.isnan(mean) and math.isnan(std)
    assert pct(mean, std) == "-"


def test_the_same_warning_is_shown_once_per_command(tmp_path, capsys):
    import warnings

    from logitnorm_plugin import cli

    shown = warnings.showwarning
    show = cli._once_per_message(lambda message, *rest: print(f"shown: {message}"))
    for _ in range(3):
        show(UserWarning("AUTC is undefined"), UserWarning, "x.py", 1)
    show(UserWarning("another"), UserWarning, "x.py", 1)
    assert capsys.readouterr().out == "shown: AUTC is undefined\nshown: another\n"
    assert main(["list", "losses"]) == 0
    assert warnings.showwarning is shown  # main() restores what it changed
