"""Tests of ``logitnorm-ood tune-t`` (logitnorm_plugin.workflows.tune_t, .t_selection): the rule as
stated, validation data only (no test split, no test-time OOD set), resumable grid, the shipped
digits result."""

import importlib
import json
import math

import pytest

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.metrics import PAPER_FPR_KEY
from logitnorm_plugin.store.results import ResultStore
from logitnorm_plugin.training import recipes
from logitnorm_plugin.training.request import TrainRequest
from logitnorm_plugin.workflows import t_selection
from logitnorm_plugin.workflows import tune_t as tuning

FAST = dict(dataset="digits", epochs=1, seeds=[0], device="cpu", noise_n=200, progress=False,
            stdout=False)


def _train_module():
    return importlib.import_module("logitnorm_plugin.training.loop")


# -- the rule, on numbers we choose ------------------------------------------------------------


def _point(t, seed, acc, fpr, auroc, status="ok"):
    return {"t": t, "seed": seed, "status": status, "ACC": acc, PAPER_FPR_KEY: fpr,
            "FPR95TPR": fpr / 2, "AUROC": auroc}


def test_rule_margin_then_lowest_fpr():
    points = [
        _point(0.01, 0, 0.950, 0.10, 0.9), _point(0.01, 1, 0.950, 0.10, 0.9),  # too inaccurate
        _point(0.02, 0, 0.975, 0.30, 0.9), _point(0.02, 1, 0.965, 0.30, 0.9),  # mean 0.970
        _point(0.04, 0, 0.980, 0.40, 0.9), _point(0.04, 1, 0.980, 0.20, 0.9),  # best acc, fpr .3
        _point(0.08, 0, 0.960, 0.05, 0.9), _point(0.08, 1, 0.960, 0.05, 0.9),  # 2 pp below
    ]
    summary = t_selection.summarize(points, seeds=[0, 1])
    assert [s["t"] for s in summary] == [0.01, 0.02, 0.04, 0.08]
    assert summary[2][PAPER_FPR_KEY] == pytest.approx(0.30)
    assert summary[2][f"{PAPER_FPR_KEY}_std"] == pytest.approx(math.sqrt(0.02))
    chosen, eligible = t_selection.select_t(summary, t_selection.SelectionRule(acc_margin=0.01))
    assert eligible == [0.02, 0.04]
    # 0.02 and 0.04 tie on FPR (0.30) and AUROC: the smaller t wins
    assert chosen == 0.02
    # a wider margin lets the low-FPR value in
    chosen, eligible = t_selection.select_t(summary, t_selection.SelectionRule(acc_margin=0.025))
    assert chosen == 0.08 and 0.08 in eligible


def test_rule_ties_go_to_auroc_then_smaller_t_and_divergence_is_excluded():
    points = [
        _point(0.005, 0, 0.99, 0.00, 0.99, status="diverged"),
        _point(0.01, 0, 0.98, 0.10, 0.95),
        _point(0.02, 0, 0.98, 0.10, 0.97),  # same FPR, higher AUROC
        _point(0.04, 0, 0.98, 0.10, 0.97),  # same FPR and AUROC, larger t
    ]
    summary = t_selection.summarize(points, seeds=[0])
    assert summary[0]["status"] == "diverged"
    chosen, eligible = t_selection.select_t(summary)
    assert chosen == 0.02 and 0.005 not in eligible
    # the pytorch-ood convention is a choice of the rule too
    rule = t_selection.SelectionRule(metric="FPR95TPR")
    assert t_selection.select_t(summary, rule)[0] == 0.02
    assert "FPR95TPR" in rule.describe() and "1 percentage point" in rule.describe()


def test_rule_needs_complete_results():
    summary = t_selection.summarize([_point(0.01, 0, 0.9, 0.1, 0.9)], seeds=[0, 1])
    assert summary[0]["status"] == "incomplete"
    with pytest.raises(UserError, match="no grid value"):
        t_selection.select_t(summary)
    with pytest.raises(UserError):
        t_selection.SelectionRule(metric="AUROC")


def test_a_choice_at_the_edge_of_the_grid_is_flagged():
    assert "largest value of the grid" in t_selection.edge_warnings(0.16, [0.04, 0.16])[0]
    assert "smallest value of the grid" in t_selection.edge_warnings(0.04, [0.04, 0.16])[0]
    assert t_selection.edge_warnings(0.08, [0.04, 0.08, 0.16]) == []


def test_shortened_recipe_scales_milestones():
    from logitnorm_plugin.training.recipes import get_recipe

    assert tuning._shortened(get_recipe("paper"), 20) == {"milestones": (8, 14)}
    assert tuning._shortened(get_recipe("paper"), 200) == {}
    assert tuning._shortened(get_recipe("digits"), 3) == {}  # cosine follows the run length


# -- end to end on the digits ------------------------------------------------------------------


class _Spy:
    """Records every split and OOD set the data layer is asked for, at the public entry points
    and at the lowest level (split indices, noise generation, the other digits OOD sets), so a
    read that bypasses one of them is still seen."""

    def __init__(self, monkeypatch):
        from logitnorm_plugin import data
        from logitnorm_plugin.data import digits, noise

        self.splits, self.index_splits, self.ood, self.noise, self.other_ood = [], [], [], [], []

        def wrap(module, name, record):
            original = getattr(module, name)

            def spy(*args, **kwargs):
                record(*args, **kwargs)
                return original(*args, **kwargs)

            monkeypatch.setattr(module, name, spy)

        wrap(data, "load_split", lambda name, split, *a, **k: self.splits.append(split))
        wrap(data, "load_ood", lambda name, *a, **k: self.ood.append((name, k.get("seed"))))
        wrap(digits, "digits_split_indices",
             lambda split, seed=0: self.index_splits.append(split))
        wrap(noise, "noise_images", lambda kind, seed, *a, **k: self.noise.append((kind, seed)))
        for name in ("natural_patches", "rotated_digits", "digits_ood"):
            wrap(digits, name, lambda *a, _n=name, **k: self.other_ood.append(_n))


def test_tiny_grid_end_to_end_applies_the_rule_and_reads_validation_data_only(
    tmp_path, monkeypatch
):
    spy = _Spy(monkeypatch)
    out = tmp_path / "tune"
    record = tuning.tune_t(grid=[0.02, 0.1], out=out, **FAST)

    # only the training and validation splits, and only the validation noise
    assert "test" not in spy.splits and "test" not in spy.index_splits
    assert {"train", "val"} <= set(spy.index_splits)
    assert spy.ood and all(o == ("gaussian", tuning.VALIDATION_NOISE_SEED) for o in spy.ood)
    assert spy.noise and all(n == ("gaussian", tuning.VALIDATION_NOISE_SEED) for n in spy.noise)
    assert spy.other_ood == []

    # the files, and the trainer's --t-from reads them
    saved = json.loads((out / "recommended_t.json").read_text())
    assert saved["chosen_t"] == record["chosen_t"]
    assert saved["grid"] == [0.02, 0.1] and saved["seeds"] == [0]
    assert saved["rule"]["metric"] == PAPER_FPR_KEY and saved["rule"]["acc_margin"] == 0.01
    assert "within 1 percentage point" in saved["rule"]["text"]
    assert {"versions", "git_commit", "device", "created_utc"} <= set(saved["provenance"])
    assert saved["command"].startswith("logitnorm-ood tune-t --dataset digits --grid 0.02,0.1")
    assert (out / "tune_t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    assert f"Chosen t = {record['chosen_t']:g}" in table and "| 0.02 |" in table

    # recompute the choice from the stored numbers, with the rule written out independently
    t_of = {p["model_id"]: r["t"] for r in saved["results"] for p in r["per_seed"]}
    with ResultStore(out / "results.sqlite") as store:
        rows = store.rows(model_ids=list(t_of), with_ids=True)
    assert len(rows) == 2 and {r["Dataset"] for r in rows} == {tuning.VALIDATION_SET_NAME}
    means = {}
    for t in sorted(set(t_of.values())):
        mine = [r for r in rows if t_of[r["model_id"]] == t]
        means[t] = {k: sum(r[k] for r in mine) / len(mine) for k in ("ACC", PAPER_FPR_KEY,
                                                                      "AUROC")}
    best = max(m["ACC"] for m in means.values())
    eligible = [t for t, m in means.items() if m["ACC"] >= best - 0.01]
    expected = min(eligible, key=lambda t: (means[t][PAPER_FPR_KEY], -means[t]["AUROC"], t))
    assert record["chosen_t"] == expected
    assert [r["t"] for r in saved["results"] if r["eligible"]] == sorted(eligible)
    for r in saved["results"]:
        assert r["ACC"] == pytest.approx(means[r["t"]]["ACC"])

    # the trainer takes t from the file and its model card says where t came from
    run = _train_module().train(
        dataset="digits", loss="logitnorm", epochs=1, seed=0, device="cpu",
        out=tmp_path / "adopted", t_from=out / "recommended_t.json", progress=False,
    )
    assert run.card["t"] == record["chosen_t"]
    assert run.card["t_from"] == str((out / "recommended_t.json").resolve())
    assert "tune-t" in run.card["t_source"]


def test_interrupted_tuning_resumes_without_recomputing_finished_points(tmp_path, monkeypatch):
    original = tuning.run_training
    calls = []

    def counting_train(request, configured):
        # one whole TrainRequest per point, no keyword relay, with the configuration checked
        # for it up front
        assert isinstance(request, TrainRequest)
        assert (request.resume, request.eval_split, request.seed) == ("auto", "val", 0)
        assert request.overrides["train_split"] == "train"
        assert configured[0].loss_kwargs["t"] == request.loss_kwargs["t"]
        calls.append(request.loss_kwargs["t"])
        return original(request, configured)

    monkeypatch.setattr(tuning, "run_training", counting_train)  # the name tune_t calls
    out = tmp_path / "tune"
    grid = [0.02, 0.1]

    class Stop(Exception):
        pass

    def stop_after_first(point):
        raise Stop(point["t"])

    with pytest.raises(Stop):
        tuning.tune_t(grid=grid, out=out, callback=stop_after_first, **FAST)
    assert calls == [0.02]
    with ResultStore(out / "results.sqlite") as store:
        first = store.rows(with_ids=True)
    assert len(first) == 1

    record = tuning.tune_t(grid=grid, out=out, **FAST)
    assert calls == [0.02, 0.1]  # the finished point was not trained again
    assert record["points"] == {"total": 2, "computed": 1, "reused": 1}
    with ResultStore(out / "results.sqlite") as store:
        rows = store.rows(with_ids=True)
    assert len(rows) == 2
    (kept,) = [r for r in rows if r["model_id"] == first[0]["model_id"]]
    assert kept == first[0]  # the same stored cell, from the same run

    # a third run recomputes nothing and chooses the same t
    again = tuning.tune_t(grid=grid, out=out, **FAST)
    assert calls == [0.02, 0.1]
    assert again["chosen_t"] == record["chosen_t"] and again["points"]["reused"] == 2


def test_device_auto_is_resolved_before_it_is_recorded(tmp_path):
    import torch

    fast = {**FAST, "device": "auto"}
    record = tuning.tune_t(grid=[0.1], out=tmp_path / "tune", **fast)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert record["provenance"]["config"]["device"].startswith(expected)
    assert record["provenance"]["device"].startswith(expected)


# -- command line and the shipped digits result ------------------------------------------------


def test_cli_rejects_bad_grid_without_traceback(capsys, tmp_path):
    from logitnorm_plugin.cli import main

    assert main(["tune-t", "--grid", "0.01,-1", "--out", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "positive temperatures" in err and "Traceback" not in err
    assert main(["tune-t", "--seeds", "a", "--out", str(tmp_path)]) == 2


def test_shipped_digits_result_is_consistent():
    record = recipes.tuned_t_record()
    assert recipes.recommended_digits_t() == record["chosen_t"]
    assert record["dataset"] == "digits" and record["chosen_t"] in record["grid"]
    assert record["command"].startswith("logitnorm-ood tune-t --dataset digits")
    assert not record["validation"]["test_split_read"]
    # the recorded choice is the one the recorded numbers select under the recorded rule
    rule = t_selection.SelectionRule(record["rule"]["acc_margin"], record["rule"]["metric"])
    assert t_selection.select_t(record["results"], rule)[0] == record["chosen_t"]
    for value in record["results"]:
        assert len(value["per_seed"]) == len(record["seeds"])


def test_reading_the_shipped_t_is_light():
    """recipes / bench may read the tuned t at import time: that must not pull in torch."""
    import subprocess
    import sys

    from logitnorm_plugin import metrics

    assert tuning.PAPER_FPR_KEY == metrics.PAPER_FPR_KEY
    code = (
        "import sys, logitnorm_plugin.training.recipes as r; r.recommended_digits_t(); "
        "print(sorted(m for m in ('torch', 'pytorch_ood', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_shipped_digits_result_matches_the_current_recipe():
    """tuned_t.json is tied to the training configuration it was tuned with: a change of the
    digits recipe (or of the trainer's resolved config) must come with a re-tuning (run the
    record's command and copy its recommended_t.json to logitnorm_plugin/tuned_t.json)."""
    record = recipes.tuned_t_record()
    training = record["training"]
    from logitnorm_plugin.training.config import resolve_config

    config, _ = resolve_config(
        record["dataset"], record["arch"], "logitnorm", loss_kwargs={"t": record["chosen_t"]},
        recipe=training["recipe"], epochs=training["epochs"], seed=0, eval_split="val",
        **{k: tuple(v) if isinstance(v, list) else v for k, v in training["overrides"].items()},
    )
    current = {k: v for k, v in config.to_dict().items()
               if k not in ("t", "t_source", "t_from", "seed", "loss_kwargs")}
    assert current == training["config"], "re-run the command in tuned_t.json"
