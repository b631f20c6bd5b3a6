"""The SQLite result store: cells, resumption bookkeeping, provenance, aggregation."""

import math
import sqlite3

import pytest
import torch

from logitnorm_plugin._core.errors import IncompatibleResultsError, UserError
from logitnorm_plugin._core.model_groups import model_configuration, model_group_fields
from logitnorm_plugin.store.results import ResultStore, aggregate


def _row(model, loss, seed, detector, dataset, auroc, acc=0.9, **extra):
    # as the engine writes it: with the model configuration (here: the loss only)
    return {
        "Model": model, "Loss": loss, "Seed": seed, "Detector": detector, "Dataset": dataset,
        "AUROC": auroc, "AUPR-IN": auroc, "AUPR-OUT": auroc, "FPR95TPR": 1 - auroc,
        "FPR95-ID95": 1 - auroc, "AUTC": 0.5, "ACC": acc, "ECE": 0.01,
        **model_group_fields(model_configuration(loss=loss)), **extra,
    }


def test_put_cells_rows_and_replace(tmp_path):
    path = tmp_path / "sub" / "results.sqlite"
    with ResultStore(path) as store:
        run = store.start_run({"git_commit": "abc", "device": "cpu"})
        store.register_config("cfg", {"benchmark": "digits", "groups": {"near": ["a"]}})
        store.put(_row("m", "ce", 0, "msp", "a", 0.8), model_id="m0", config_id="cfg",
                  detector_id="msp", run_id=run)
        store.put(_row("m", "ce", 0, "msp", "b", 0.6), model_id="m0", config_id="cfg",
                  detector_id="msp", run_id=run)
        assert set(store.cells("m0", "cfg")) == {("msp", "a"), ("msp", "b")}
        assert store.cells("m0", "other") == {}
        # same cell again replaces it
        store.put(_row("m", "ce", 0, "msp", "a", 0.7), model_id="m0", config_id="cfg",
                  detector_id="msp", run_id=run)
        assert store.count("cfg") == 2
        assert store.cells("m0", "cfg")[("msp", "a")]["AUROC"] == 0.7
        rows = store.rows("cfg", with_ids=True)
        assert [r["Dataset"] for r in rows] == ["b", "a"]
        assert {r["run_id"] for r in rows} == {run}
        assert store.provenance(run)["git_commit"] == "abc"
        assert store.config("cfg")["groups"] == {"near": ["a"]}
    # persisted across connections
    with ResultStore(path) as store:
        assert store.count() == 2
        assert store.delete(model_id="m0") == 2
        assert store.count() == 0


def test_each_put_is_committed_before_the_next(tmp_path):
    """A crash after a put loses nothing: another connection sees the cell immediately."""
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    store.put(_row("m", "ce", 0, "msp", "a", 0.8), model_id="m0", config_id="c",
              detector_id="msp")
    other = sqlite3.connect(str(path))
    assert other.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 1
    other.close()
    store.close()


def test_nan_survives_the_round_trip(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(_row("m", "ce", 0, "msp", "a", float("nan")), model_id="m", config_id="c",
                  detector_id="msp")
        assert math.isnan(store.rows("c")[0]["AUROC"])


def test_scores_round_trip(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        values = torch.randn(37)
        store.put_scores("m", "c", "msp", "ID", values)
        back = store.scores("m", "c", "msp", "ID")
        assert torch.equal(back, values.float())
        assert store.scores("m", "c", "msp", "other") is None


def test_not_a_store_is_a_user_error(tmp_path):
    bad = tmp_path / "results.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IncompatibleResultsError) as info:
        ResultStore(bad)
    assert isinstance(info.value, UserError)
    newer = tmp_path / "newer.sqlite"
    with ResultStore(newer) as store:
        store._db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        store._db.commit()
    with pytest.raises(IncompatibleResultsError, match="schema version 99"):
        ResultStore(newer)


def test_aggregate_mean_std_over_seeds_of_mean_over_sets():
    rows = []
    # two seeds of "ce": per-seed means over sets a, b are 0.7 and 0.9
    for seed, (a, b) in enumerate([(0.6, 0.8), (0.8, 1.0)]):
        rows += [_row(f"ce{seed}", "ce", seed, "msp", "a", a, acc=0.8 + 0.1 * seed),
                 _row(f"ce{seed}", "ce", seed, "msp", "b", b, acc=0.8 + 0.1 * seed)]
    rows += [_row("ln0", "ln", 0, "msp", "a", 0.5), _row("ln0", "ln", 0, "msp", "b", 0.7)]
    out = aggregate(rows, groups={"near": ["a"], "far": ["b"]})
    ce = next(e for e in out if e["Loss"] == "ce")
    assert ce["Seeds"] == 2 and ce["Datasets"] == 2
    assert ce["AUROC"] == pytest.approx(0.8)
    assert ce["AUROC_std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.7, 0.9
    assert ce["near/AUROC"] == pytest.approx(0.7)
    assert ce["far/AUROC"] == pytest.approx(0.9)
    assert ce["ACC"] == pytest.approx(0.85)
    ln = next(e for e in out if e["Loss"] == "ln")
    # one seed: the standard deviation is undefined (NaN), not 0, so tables print no "± 0.00"
    assert ln["Seeds"] == 1 and ln["AUROC"] == pytest.approx(0.6) and math.isnan(ln["AUROC_std"])
    per_set = aggregate(rows, per_dataset=True)
    a = next(e for e in per_set if e["Loss"] == "ce" and e["Dataset"] == "a")
    assert a["AUROC"] == pytest.approx(0.7)


def test_aggregate_rows_stored_before_a_metric_existed():
    """Rows without the paper's AUPR (AUPR-ID-AP) or OpenOOD's FPR95 (older stores) still
    aggregate: those metrics are NaN (shown as "-"), with groups too, the others unchanged."""
    old = [_row("m0", "ce", 0, "msp", "a", 0.6), _row("m0", "ce", 0, "msp", "b", 0.8)]
    new = [_row("m1", "ce", 1, "msp", d, v, **{"AUPR-ID-AP": v, "FPR95-OpenOOD": 1 - v})
           for d, v in (("a", 0.7), ("b", 0.9))]
    (entry,) = aggregate(old, groups={"near": ["a"]})
    assert math.isnan(entry["AUPR-ID-AP"]) and math.isnan(entry["FPR95-OpenOOD"])
    assert "near/AUPR-ID-AP" not in entry and entry["near/AUROC"] == pytest.approx(0.6)
    (mixed,) = aggregate(old + new, groups={"near": ["a"]})
    assert mixed["Seeds"] == 2 and mixed["AUROC"] == pytest.approx(0.75)
    # one seed has the metric: its standard deviation is undefined (NaN, printed as the mean)
    assert mixed["AUPR-ID-AP"] == pytest.approx(0.8) and math.isnan(mixed["AUPR-ID-AP_std"])
    assert mixed["near/AUPR-ID-AP"] == pytest.approx(0.7)
    assert mixed["FPR95-OpenOOD"] == pytest.approx(0.2)


def test_store_aggregate_uses_registered_groups(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.register_config("c", {"groups": {"near": ["a"], "far": ["b"]}})
        for model, seed in (("x", 0), ("y", 1)):
            for dataset, auroc in (("a", 0.6), ("b", 0.9)):
                store.put(_row(model, "ce", seed, "msp", dataset, auroc), model_id=model,
                          config_id="c", detector_id="msp")
        (entry,) = store.aggregate("c")
        assert entry["near/AUROC"] == pytest.approx(0.6)
        assert entry["far/AUROC"] == pytest.approx(0.9)
        (only_x,) = store.aggregate("c", model_ids=["x"])
        assert only_x["Seeds"] == 1


def test_rows_and_aggregate_filter_detectors(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        for det in ("msp", "odin", "energy"):
            store.put(_row("m", "ce", 0, det, "a", 0.7), model_id="m", config_id="c",
                      detector_id=det)
        assert {r["Detector"] for r in store.rows("c", detectors=["msp", "odin"])} == {
            "msp", "odin"}
        assert [e["Detector"] for e in store.aggregate("c", detectors=["energy"])] == ["energy"]


def _group(label, cls="pkg.Det", distribution="dist", **kwargs):
    import json

    return json.dumps({"label": label, "name": label.partition("(")[0], "class": cls,
                       "distribution": distribution, "kwargs": kwargs}, sort_keys=True)


def test_configurations_of_one_name_are_never_averaged(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        cells = [("plain", _group("logitnorm"), 0.6), ("t1", _group("logitnorm(t=1)", t=1.0), 0.9),
                 ("other", _group("logitnorm", cls="fake.Det", distribution="fakeplug"), 0.2)]
        for det_id, group, auroc in cells:
            store.put(_row("m", "ce", 0, "logitnorm", "a", auroc), model_id="m", config_id="c",
                      detector_id=det_id, detector_group=group)
        entries = {e["Detector"]: e["AUROC"] for e in store.aggregate("c")}
        # two classes under one label show their distribution; t=1 has its own label
        assert entries == pytest.approx({"logitnorm [dist]": 0.6, "logitnorm(t=1)": 0.9,
                                         "logitnorm [fakeplug]": 0.2})
        (only,) = store.aggregate("c", detector_ids=["plain"])
        assert only["Detector"] == "logitnorm" and only["AUROC"] == pytest.approx(0.6)
        # the stored rows carry the same distinct labels (exports and reports read them)
        assert {r["Detector"] for r in store.rows("c")} == set(entries)


def test_a_store_of_another_schema_is_refused_or_replaced(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        store.put(_row("m", "ce", 0, "msp", "a", 0.7), model_id="m", config_id="c",
                  detector_id="msp")
        store._db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        store._db.commit()
    with pytest.raises(IncompatibleResultsError, match="schema version 1.*bench --force"):
        ResultStore(path)
    with ResultStore(path, replace_incompatible=True) as store:
        assert store.count() == 0
    assert (tmp_path / "results.sqlite.schema-1.bak").is_file()
