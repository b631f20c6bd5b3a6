"""``logitnorm-ood export RESULTS --format openood-leaderboard``: OpenOOD v1.5 leaderboard rows,
``papers.csv`` lines and ``eval_ood.py``-layout tables, read back with ``csv`` and checked
against the store; the refusal of results outside the v1.5 protocol."""

import csv
import random
from pathlib import Path

import numpy as np
import pytest

from logitnorm_plugin._core import provenance
from logitnorm_plugin.cli import main
from logitnorm_plugin.data.benchmarks import CIFAR10OpenOODBenchmark
from logitnorm_plugin.reporting import leaderboard
from logitnorm_plugin.store.results import STORE_FILE, ResultStore

#: the header of results/cifar10.csv on OpenOOD's `leaderboard` branch
LIVE_HEADER = ["Training", "Postprocessor", "Near-OOD_AUROC", "Far-OOD_AUROC", "ID_Accuracy",
               "Outlier_Data", "Arch", "Additional_Description"]
OOD = list(CIFAR10OpenOODBenchmark._ood)
GROUPS = {g: list(v) for g, v in CIFAR10OpenOODBenchmark._groups.items()}
METRICS = ("AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "FPR95-ID95", "FPR95-OpenOOD")
LOSSES = {"cross_entropy": "CrossEntropy", "logitnorm": "LogitNorm"}
DETECTORS = {"msp": "MSP", "energy": "EBO", "logitnorm": "LogitNorm"}


def write_store(folder: Path, benchmark="cifar10_openood", seeds=(0, 1, 2),
                arch="resnet18-32x32", protocol="full", losses=tuple(LOSSES),
                seed_offset=0) -> Path:
    """A result store written through ResultStore's API, as `bench` writes one: losses x
    seeds x detectors x the six OpenOOD v1.5 CIFAR-10 OOD sets, random metric values."""
    rng = random.Random(len(seeds) * 7 + seed_offset)
    with ResultStore(folder / STORE_FILE) as store:
        store.register_config("cfg-openood", {
            "benchmark": benchmark, "protocol": protocol, "seed": 0, "kwargs": {},
            "ood_names": OOD, "groups": GROUPS,
        })
        run = store.start_run(provenance.collect(device="cpu", config={"command": "bench"}))
        for loss in losses:
            for seed in seeds:
                acc = rng.uniform(0.9, 0.96)
                for dataset in OOD:
                    for det in DETECTORS:
                        row = {
                            "Model": f"{arch}/cifar10/{loss}/s{seed}", "Loss": loss,
                            "Seed": seed, "Arch": arch, "Detector": det, "Dataset": dataset,
                            "Group": "near" if dataset in GROUPS["near"] else "far",
                            "Benchmark": benchmark, "Protocol": protocol,
                            **{m: rng.uniform(0.5, 1.0) for m in METRICS}, "ACC": acc,
                            "ECE": rng.uniform(0, 0.1),
                        }
                        store.put(row, model_id=f"weights:{loss}-{seed}-{seed_offset}",
                                  config_id="cfg-openood", detector_id=det, run_id=run)
    return folder


def stored(folder):
    with ResultStore(folder / STORE_FILE) as store:
        return store.rows(with_ids=True)


def mean_std(values):
    """OpenOOD's eval_ood.py: percent, mean and np.std (population), two decimals."""
    values = np.asarray(values, dtype=np.float64) * 100
    return f"{values.mean():.2f} \u00b1 {values.std():.2f}"


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture
def v15(tmp_path):
    return write_store(tmp_path / "results")


def test_rows_read_back_equal_the_store(v15, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(v15), "--format", "openood-leaderboard", "--out", str(out)]) == 0
    assert "openood results:" in capsys.readouterr().out
    table = read_csv(out / "openood" / "results" / "cifar10.csv")
    assert table[0] == LIVE_HEADER
    rows = stored(v15)
    seen = set()
    for line in table[1:]:
        rec = dict(zip(LIVE_HEADER, line))
        loss = {v: k for k, v in LOSSES.items()}[rec["Training"]]
        det = {v: k for k, v in DETECTORS.items()}[rec["Postprocessor"]]
        seen.add((loss, det))
        mine = [r for r in rows if r["Loss"] == loss and r["Detector"] == det]
        seeds = sorted({r["Seed"] for r in mine})
        assert seeds == [0, 1, 2]
        for column, group in (("Near-OOD_AUROC", "near"), ("Far-OOD_AUROC", "far")):
            per_seed = [np.mean([r["AUROC"] for r in mine
                                 if r["Seed"] == s and r["Dataset"] in GROUPS[group]])
                        for s in seeds]
            assert rec[column] == mean_std(per_seed), (loss, det, column)
        acc = [next(r["ACC"] for r in mine if r["Seed"] == s) for s in seeds]
        assert rec["ID_Accuracy"] == mean_std(acc)
        assert rec["Outlier_Data"] == "No" and rec["Arch"] == "ResNet18"
        assert "3 seeds" in rec["Additional_Description"]
        assert "NONSTANDARD" not in rec["Additional_Description"]
    assert seen == {(loss, det) for loss in LOSSES for det in DETECTORS}
    # the spelling of the live leaderboard; the value format "92.33 ± 0.08"
    assert {line[0] for line in table[1:]} == {"CrossEntropy", "LogitNorm"}
    assert all(len(line[2].split(" \u00b1 ")) == 2 for line in table[1:])
    # papers.csv: every alias used is already listed upstream, so only the header
    assert read_csv(out / "openood" / "utils" / "papers.csv") == [["Alias", "Link"]]
    assert (out / "openood" / "provenance.json").is_file()


def test_eval_ood_tables_in_openood_layout(v15, tmp_path):
    written = leaderboard.write_leaderboard(v15, out=tmp_path / "export")
    assert len(written["eval_ood"]) == len(LOSSES) * len(DETECTORS)
    rows = stored(v15)
    path = tmp_path / "export" / "openood" / "ood" / "cifar10_openood" / \
        "LogitNorm_resnet18-32x32" / "ebo.csv"
    assert path in written["eval_ood"]
    table = read_csv(path)
    assert table[0] == ["", "FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"]
    # rows: near sets, nearood, far sets, farood, in OpenOOD's names (texture, not textures)
    assert [line[0] for line in table[1:]] == [
        "cifar100", "tin", "nearood", "mnist", "svhn", "texture", "places365", "farood"]
    mine = [r for r in rows if r["Loss"] == "logitnorm" and r["Detector"] == "energy"]
    columns = {"FPR@95": "FPR95-OpenOOD", "AUROC": "AUROC", "AUPR_IN": "AUPR-IN",
               "AUPR_OUT": "AUPR-OUT", "ACC": "ACC"}
    ours = {"texture": "textures"}
    for line in table[1:]:
        name = line[0]
        if name in ("nearood", "farood"):
            sets = GROUPS["near" if name == "nearood" else "far"]
        else:
            sets = [ours.get(name, name)]
        for column, value in zip(table[0][1:], line[1:]):
            per_seed = [np.mean([r[columns[column]] for r in mine
                                 if r["Seed"] == s and r["Dataset"] in sets])
                        for s in (0, 1, 2)]
            assert value == mean_std(per_seed), (name, column)


def test_refuses_results_outside_the_v15_protocol(tmp_path, capsys):
    two_seeds = write_store(tmp_path / "two", seeds=(0, 1))
    assert main(["export", str(two_seeds), "--format", "openood-leaderboard"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "v1.5" in err and "2 seed(s)" in err and "--nonstandard" in err
    assert not (two_seeds / "export" / "openood").exists()

    paper_cifar = write_store(tmp_path / "paper", benchmark="cifar10", protocol="paper",
                              arch="wrn-40-2")
    assert main(["export", str(paper_cifar), "--format", "openood-leaderboard"]) == 2
    err = capsys.readouterr().err
    assert "benchmark cifar10 is not an OpenOOD v1.5 benchmark" in err
    wrong_arch = write_store(tmp_path / "arch", arch="wrn-40-2", protocol="paper")
    with pytest.raises(leaderboard.NonStandardResultsError, match="architecture wrn-40-2"):
        leaderboard.write_leaderboard(wrong_arch)


def test_nonstandard_rows_say_where_they_come_from(tmp_path):
    folder = write_store(tmp_path / "paper", benchmark="cifar10", protocol="paper",
                         arch="wrn-40-2", seeds=(0, 1), losses=("logitnorm",))
    assert main(["export", str(folder), "--nonstandard", "--format", "openood-leaderboard",
                 "md"]) == 0
    table = read_csv(folder / "export" / "openood" / "results" / "cifar10.csv")
    assert table[0] == LIVE_HEADER
    rows = stored(folder)
    for line in table[1:]:
        rec = dict(zip(LIVE_HEADER, line))
        note = rec["Additional_Description"]
        for part in ("NONSTANDARD", "benchmark cifar10", "protocol paper", "arch wrn-40-2",
                     "2 seeds (0 1)"):
            assert part in note
        det = {v: k for k, v in DETECTORS.items()}[rec["Postprocessor"]]
        per_seed = [np.mean([r["AUROC"] for r in rows if r["Detector"] == det
                             and r["Seed"] == s and r["Dataset"] in GROUPS["far"]])
                    for s in (0, 1)]
        assert rec["Far-OOD_AUROC"] == mean_std(per_seed)
        assert rec["Arch"] == "wrn-40-2"
    # the other formats asked for in the same call are written too
    assert (folder / "export" / "results_table.md").is_file()


def test_two_models_with_one_seed_are_not_averaged_as_seeds(tmp_path):
    folder = write_store(tmp_path / "r", losses=("logitnorm",))
    write_store(tmp_path / "r", losses=("logitnorm",), seed_offset=1)  # another model, s0-s2
    with pytest.raises(ValueError, match="share seed 0"):
        leaderboard.write_leaderboard(folder)


def test_method_names_in_openood_spelling():
    assert leaderboard.training_alias("cross_entropy") == "CrossEntropy"
    assert leaderboard.training_alias("outlier_exposure") == "OE"
    assert leaderboard.postprocessor_alias("maxlogit") == "MLS"
    assert leaderboard.postprocessor_alias("temperature_scaling") == "TempScale"
    assert leaderboard.postprocessor_alias("logitnorm(t=1)") == "LogitNorm(t=1)"
    assert leaderboard.postprocessor_alias("unknown_det") == "unknown_det"
    assert leaderboard.format_mean_std([0.9233, 0.9241, 0.9225]) == mean_std(
        [0.9233, 0.9241, 0.9225])
    assert leaderboard.format_mean_std([]) == "/"


def test_papers_line_for_an_alias_openood_lacks(tmp_path):
    folder = write_store(tmp_path / "r", losses=("entropic_open_set",))
    leaderboard.write_leaderboard(folder)
    lines = read_csv(folder / "export" / "openood" / "utils" / "papers.csv")
    assert lines[0] == ["Alias", "Link"]
    assert [line[0] for line in lines[1:]] == ["entropic_open_set"]
    assert lines[1][1].startswith("http")
    table = read_csv(folder / "export" / "openood" / "results" / "cifar10.csv")
    assert {line[5] for line in table[1:]} == {"Yes"}  # trained with outlier data
