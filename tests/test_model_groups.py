"""One row per model configuration in ``bench``, ``report`` and ``export``: a temperature
sweep of real digits runs, end to end through the command line (issue 21, points 1, 2 and 5),
and resuming a run or a results folder without repeating every argument (point 3)."""

import json
import re
import shutil

import pytest

from logitnorm_plugin._core.model_groups import describe_groups, group_of
from logitnorm_plugin.cli import main
from logitnorm_plugin.reporting import upload_keys
from logitnorm_plugin.store.results import ResultStore

SWEEP = (0.02, 0.04, 0.08, 0.16)
DETECTORS = ("msp", "energy")


def _train(out, *args):
    assert main(["train", "--epochs", "2", "--quiet", "--out", str(out), *args]) == 0
    return out


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    """Real digits runs: LogitNorm at four temperatures and cross-entropy, seed 0; and a
    second seed of t=0.02."""
    root = tmp_path_factory.mktemp("sweep")
    runs = {f"t{t}": _train(root / f"ln-t{t}-s0", "--loss-arg", f"t={t}") for t in SWEEP}
    runs["ce"] = _train(root / "ce-s0", "--loss", "cross_entropy")
    runs["t0.02-s1"] = _train(root / "ln-t0.02-s1", "--loss-arg", "t=0.02", "--seed", "1")
    return runs


def _summary_rows(table_md: str) -> list[list[str]]:
    """The rows of bench's summary table (the first Markdown table of table.md)."""
    lines = table_md.split("## Per OOD set")[0].splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in lines if line.startswith("|")]
    return rows[2:]


def _report_summary(out) -> list[dict]:
    doc = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    return [c for c in doc["cells"] if c["table"] == "summary" and c["column"] == "Seeds"]


@pytest.mark.slow
def test_temperature_sweep_one_row_per_model_in_bench_report_and_export(
        sweep_runs, tmp_path, capsys):
    """bench --models with four LogitNorm temperatures and cross-entropy: five rows per
    detector, each of one seed, in bench, report and export; five distinct upload keys."""
    out = tmp_path / "results"
    labels = [*(f"t{t}" for t in SWEEP), "ce"]
    models = [f"{label}={sweep_runs[label]}" for label in labels]
    assert main(["bench", "--models", *models, "--detectors", *DETECTORS, "--out", str(out),
                 "--no-progress"]) == 0
    capsys.readouterr()

    # bench: one row per model and detector, labelled as given
    rows = _summary_rows((out / "table.md").read_text(encoding="utf-8"))
    assert len(rows) == len(labels) * len(DETECTORS)
    assert sorted(r[0] for r in rows) == sorted(labels * len(DETECTORS))
    assert {r[3] for r in rows} == {"1"}  # Seeds

    # report: the same five models per detector, one seed each
    assert main(["report", str(out)]) == 0
    seeds = _report_summary(out)
    assert len(seeds) == len(labels) * len(DETECTORS)
    assert {c["seeds"] for c in seeds} == {1}
    assert sorted({c["row"][1] for c in seeds}) == sorted(
        {"cross_entropy", *(f"t{t}" for t in SWEEP)})
    # the store knew the run folders: reliability diagram and logit-norm curves without --runs
    text = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert "![reliability]" in text and "![logit norm]" in text
    assert "--runs" not in text

    # export: one table per model, each of one model and seed 0
    assert main(["export", str(out), "--format", "json", "csv"]) == 0
    doc = json.loads((out / "export" / "results_table.json").read_text(encoding="utf-8"))
    assert len(doc["tables"]) == len(labels)
    assert all(t["models"] == 1 and t["seeds"] == [0] for t in doc["tables"])
    assert sorted(t["model"] for t in doc["tables"]) == sorted(
        {"cross_entropy", *(f"t{t}" for t in SWEEP)})
    csv_text = (out / "export" / "results_table.csv").read_text(encoding="utf-8")
    assert csv_text.splitlines()[0].split(",")[4] == "Model"

    # upload keys: five, distinct, the temperature in the LogitNorm ones
    capsys.readouterr()
    upload = tmp_path / "upload"
    assert main(["export", "--model", *(str(sweep_runs[label]) for label in labels),
                 "--weights-out", str(upload)]) == 0
    keys = re.findall(r'^    key="([^"]+)",$', capsys.readouterr().out, re.M)
    assert len(keys) == 5 and len(set(keys)) == 5
    assert sorted(keys) == sorted(["digits-cnn/digits/crossentropy/s0",
                                   *(f"digits-cnn/digits/logitnorm-t{t:g}/s0" for t in SWEEP)])
    folders = {p.parent.relative_to(upload).as_posix() for p in upload.rglob("model-*.pt")}
    assert folders == set(keys)


def test_seeds_are_averaged_within_one_configuration_only(sweep_runs, tmp_path, capsys):
    """Two seeds of t=0.02 and one of t=0.04: two rows (2 seeds, 1 seed) in bench, report and
    export; never one "3 seeds" row, never three rows."""
    out = tmp_path / "results"
    assert main(["bench", "--models", str(sweep_runs["t0.02"]), str(sweep_runs["t0.02-s1"]),
                 str(sweep_runs["t0.04"]), "--detectors", "msp", "--out", str(out),
                 "--no-progress", "--no-plots"]) == 0
    capsys.readouterr()
    rows = _summary_rows((out / "table.md").read_text(encoding="utf-8"))
    assert sorted(r[3] for r in rows) == ["1", "2"]
    assert any(r[0] == "logitnorm (t=0.02)" and r[3] == "2" for r in rows)

    assert main(["report", str(out), "--no-figures"]) == 0
    assert sorted(c["seeds"] for c in _report_summary(out)) == [1, 2]

    assert main(["export", str(out), "--format", "json"]) == 0
    doc = json.loads((out / "export" / "results_table.json").read_text(encoding="utf-8"))
    assert sorted((t["models"], tuple(t["seeds"])) for t in doc["tables"]) == [
        (1, (0,)), (2, (0, 1))]

    # the one rule, read back from the store: every group's members differ in the seed only
    with ResultStore(out / "results.sqlite") as store:
        stored = store.rows(with_ids=True)
    by_group = {}
    for row in stored:
        by_group.setdefault(group_of(row), {})[row["model_id"]] = row["model_config"]
    for members in by_group.values():
        assert len({json.dumps(c, sort_keys=True) for c in members.values()}) == 1
    assert sorted(len(m) for m in by_group.values()) == [1, 2]
    # a configuration of one model keeps its label; one of several seeds is named by what
    # sets it apart
    assert sorted(describe_groups(stored).values()) == ["ln-t0.04-s0", "logitnorm (t=0.02)"]


def test_upload_keys_refused_with_the_fix(sweep_runs, tmp_path, capsys):
    """A key pytorch-ood's registry has, two copies of one configuration, and a second model
    into one upload folder are refused in one line naming --key."""
    ln = str(sweep_runs["t0.02"])
    assert main(["export", "--model", ln, "--key", "wrn-40-2/cifar10/logitnorm/s0"]) == 2
    err = capsys.readouterr().err
    assert "already a key of pytorch-ood's model registry" in err and "--key" in err
    assert len(err.strip().splitlines()) == 1

    copy = tmp_path / "copy"
    shutil.copytree(ln, copy)
    assert main(["export", "--model", ln, str(copy)]) == 2
    err = capsys.readouterr().err
    assert "both export as 'digits-cnn/digits/logitnorm/s0'" in err and "--key" in err

    upload = tmp_path / "upload"
    assert main(["export", "--model", ln, "--weights-out", str(upload)]) == 0
    assert main(["export", "--model", str(sweep_runs["t0.04"]), "--weights-out",
                 str(upload)]) == 2
    err = capsys.readouterr().err
    assert "already holds another model's weights" in err and "--key" in err
    assert len(list(upload.rglob("model-*.pt"))) == 1

    assert upload_keys.export_keys([ln], known=[]) == {ln: "digits-cnn/digits/logitnorm/s0"}


def test_url_without_the_hash_is_refused(sweep_runs, capsys):
    run = str(sweep_runs["ce"])
    assert main(["export", "--model", run, "--url", "https://example.org/x/model.pt"]) == 2
    err = capsys.readouterr().err
    assert "torch.hub" in err and "model-" in err
    card = json.loads((sweep_runs["ce"] / "model.json").read_text(encoding="utf-8"))
    url = f"https://example.org/x/model-{card['sha256'][:16]}.pt"
    assert main(["export", "--model", run, "--url", url]) == 0
    assert url in capsys.readouterr().out


def test_resume_takes_the_stored_configuration(sweep_runs, tmp_path, capsys):
    """``train --out RUN --resume`` with nothing else resumes the run as it was configured
    (t=0.02 where the recipe's default is 0.08); an option given that differs is named."""
    run = tmp_path / "run"
    shutil.copytree(sweep_runs["t0.02"], run)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    capsys.readouterr()
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["t"] == 0.02
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--loss-arg",
                 "t=0.08"]) == 2
    err = capsys.readouterr().err
    assert "loss_kwargs.t: run folder has 0.02, now 0.08" in err
    assert "epochs" not in err  # not given: taken from the folder, not compared


def test_bench_into_a_folder_of_other_settings_says_what_differs(tmp_path, capsys):
    out = tmp_path / "results"
    common = ["bench", "--epochs", "1", "--seeds", "0", "--detectors", "msp", "--no-plots",
              "--no-progress", "--out", str(out)]
    assert main(common) == 0
    capsys.readouterr()
    assert main([*common, "--t", "0.04"]) == 2
    err = capsys.readouterr().err
    assert "digits-logitnorm-s0 differs in loss_kwargs.t: run folder has 0.08, now 0.04" in err
    assert "--out" in err and "--force" in err and "cannot resume" not in err
    assert main([*common, "--t", "0.04", "--force"]) == 0
    capsys.readouterr()
    aside = [p.name for p in (out / "runs").iterdir() if ".replaced-" in p.name]
    assert len(aside) == 1 and aside[0].startswith("digits-logitnorm-s0")
    config = json.loads((out / "runs" / "digits-logitnorm-s0" / "config.json").read_text())
    assert config["t"] == 0.04


def test_argument_errors_answer_before_torch_loads(tmp_path, monkeypatch, capsys):
    """Values and --models folders are checked before pytorch-ood is imported (point 8): the
    error is the same one line, from a process that has not loaded torch."""
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "ln-a").mkdir(parents=True)
    probe = ("import sys; from logitnorm_plugin.cli import main; code = main(sys.argv[1:]); "
             "print('torch' in sys.modules, file=sys.stderr); sys.exit(code)")
    for argv, message in (
        (["bench", "--epochs", "0"], "the number of epochs must be >= 1, got 0"),
        (["train", "--epochs", "0"], "the number of epochs must be >= 1, got 0"),
        (["tune-t", "--seeds", "-1"], "the seed must be an integer"),
        (["bench", "--models", "runs/x"], "no such run folder 'runs/x' (runs/ holds: ln-a)"),
    ):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                              text=True, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and message in lines[0], done.stderr
        assert lines[-1] == "False"  # torch was never imported


def test_no_progress_keeps_the_reuse_line(tmp_path, capsys):
    out = tmp_path / "results"
    args = ["bench", "--epochs", "1", "--seeds", "0", "--losses", "cross_entropy",
            "--detectors", "msp", "--no-plots", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "bench: reused 1 of 1 trained model" in err and " epoch " not in err


def test_cells_stored_before_groups_are_grouped_after_a_rerun(sweep_runs, tmp_path, capsys):
    """A store written before the model configuration was recorded: its rows are each their
    own model (never averaged on a guess); running bench on it again adds the configuration
    to the stored rows, and report then averages the two seeds of t=0.02 as one model."""
    import sqlite3

    out = tmp_path / "results"
    args = ["bench", "--models", str(sweep_runs["t0.02"]), str(sweep_runs["t0.02-s1"]),
            "--detectors", "msp", "--out", str(out), "--no-progress", "--no-plots"]
    assert main(args) == 0
    with sqlite3.connect(out / "results.sqlite") as db:  # as an older version stored them
        rows = db.execute("SELECT rowid, row FROM cells").fetchall()
        for rowid, text in rows:
            row = {k: v for k, v in json.loads(text).items()
                   if k not in ("model_group", "model_config", "Run")}
            db.execute("UPDATE cells SET row = ? WHERE rowid = ?", (json.dumps(row), rowid))
        # nor sealed its cells (store/seals.py: an older store is sealed when first opened)
        db.execute("ALTER TABLE cells DROP COLUMN seal")
        db.execute("DELETE FROM meta WHERE key = 'cells_sealed'")
    assert main(["report", str(out), "--no-figures"]) == 0
    assert sorted(c["seeds"] for c in _report_summary(out)) == [1, 1]
    capsys.readouterr()
    assert main(args) == 0  # every cell reused, the configuration added
    assert "8 of 8 cells from" in capsys.readouterr().err
    assert main(["report", str(out), "--no-figures"]) == 0
    assert [c["seeds"] for c in _report_summary(out)] == [2]
