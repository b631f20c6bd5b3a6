"""Bad input on the command line: one line and a status, never a traceback (issue 22, point 11).

One table, :data:`CASES`: each case is a real ``logitnorm-ood`` command line, run in its own
folder through the command line's ``main`` as the console script calls it (or the installed
console script in a subprocess, where the input can break the process itself), on a tiny real
bench folder that the module fixture makes once (digits, one objective, one epoch). What each
case must show is its ``expect``:

- ``"error"``: exit status 2 and exactly one error line on stderr
  (``logitnorm-ood COMMAND: error: ...``) containing ``says``;
- ``"warning"``: the command does its work (status 0) and a warning line on stderr
  (``logitnorm-ood: ...``) contains ``says``; ``then`` checks what it wrote;
- ``"quiet"``: stdout is a pipe whose reader is gone: status 141 (128 + SIGPIPE, as Unix tools
  end) and nothing at all on stderr.

No case may print ``Traceback`` anywhere. To add a bad input, add a :class:`Case`: ``argv``
may name the fixture's paths as ``{run}`` (a trained run folder), ``{results}`` (a bench
folder holding it), ``{file}`` (a regular file), ``{dir}`` (an empty folder), ``{long}`` (a
name longer than a file system takes) and ``{case}`` (the case's own folder, where ``setup``
builds hostile files).

``python tests/test_hostile_inputs.py`` runs the same table outside pytest and prints each
case with the tracebacks it printed, and their count (issue 22 asks for 0).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

SCRIPT = Path(sys.executable).parent / "logitnorm-ood"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
#: a file or folder name longer than the 255 bytes file systems take (ENAMETOOLONG)
LONG = "x" * 300
#: the bench options of the cases that evaluate (the fixture's own)
EVAL = ("--detectors", "msp", "--no-progress", "--no-plots", "--device", "cpu")


@dataclass(frozen=True)
class Case:
    """One bad input and what the command must answer (see the module docstring)."""

    id: str
    argv: tuple
    #: text the error or warning line contains (a tuple: each of them)
    says: str | tuple = ""
    expect: str = "error"
    #: builds hostile input in the case's folder: ``setup(case_dir, paths)``
    setup: Callable[[Path, dict], None] | None = None
    #: checks the command's output afterwards: ``then(case_dir, paths, result)``
    then: Callable | None = None
    #: run the console script in a subprocess (where the input could break the process
    #: itself: a real pipe, a crash); else :func:`logitnorm_plugin.cli.main` in this process
    process: bool = False


def _hostile_run(damage: Callable[[Path], None]):
    """A ``setup`` that copies the fixture's run folder to ``{case}/hostile`` and damages it."""

    def setup(case: Path, paths: dict) -> None:
        damage(Path(shutil.copytree(paths["run"], case / "hostile")))

    return setup


def _nan_weights(run: Path) -> None:
    """Weights that make every logit NaN, sealed as a forger (or a diverged export) would:
    the weights' SHA-256 and the card's digest match them."""
    import torch

    from logitnorm_plugin._core.digests import json_sha256, sha256_file

    state = torch.load(run / "model.pt", weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in state.items()}, run / "model.pt")
    card = json.loads((run / "model.json").read_text(encoding="utf-8"))
    card["sha256"] = sha256_file(run / "model.pt")
    card.pop("card_sha256")
    card["card_sha256"] = json_sha256(card)
    (run / "model.json").write_text(json.dumps(card), encoding="utf-8")


def _damaged_request(case: Path, paths: dict) -> None:
    shutil.copytree(paths["results"], case / "results")
    request = next((case / "results" / "runs").glob("*/bench_request.json"))
    request.write_text('{"dataset": "digits", "loss": ', encoding="utf-8")


def _good_run_reported(case: Path, paths: dict, result) -> None:
    """The good run folder is in the report: its logit-norm curve is drawn."""
    report = (case / "report" / "report.md").read_text(encoding="utf-8")
    assert "logit_norm_" in report and "hostile" in result.stdout, result.stdout


def _bench_reused(case: Path, paths: dict, result) -> None:
    assert "0 to evaluate" in result.stderr, result.stderr
    request = next((case / "results" / "runs").glob("*/bench_request.json"))
    assert isinstance(json.loads(request.read_text(encoding="utf-8")), dict)  # rewritten


def _resealed_run(**changes):
    """A ``setup``: the fixture's run folder copied to ``{case}/hostile`` with its model card
    changed and resealed (``hostile.resealed_copy``); a callable change is given the card."""

    def setup(case: Path, paths: dict) -> None:
        from hostile import resealed_copy

        card = json.loads((paths["run"] / "model.json").read_text(encoding="utf-8"))
        resealed_copy(paths["run"], case / "hostile",
                      **{k: v(card) if callable(v) else v for k, v in changes.items()})

    return setup


def _results_copy(change: Callable[[Path], None]):
    """A ``setup``: the fixture's bench folder copied to ``{case}/results``, its store
    changed by ``change(path of results.sqlite)`` with the stdlib's sqlite3."""

    def setup(case: Path, paths: dict) -> None:
        shutil.copytree(paths["results"], case / "results")
        change(case / "results" / "results.sqlite")

    return setup


def _edit_stored_cell(store: Path, new_row: Callable[[str], str]) -> None:
    import sqlite3

    db = sqlite3.connect(store)
    rowid, text = db.execute("SELECT rowid, row FROM cells LIMIT 1").fetchone()
    db.execute("UPDATE cells SET row = ? WHERE rowid = ?", (new_row(text), rowid))
    db.commit()
    db.close()


def _one_digit_changed(text: str) -> str:
    row = json.loads(text)
    key = next(k for k, v in row.items() if isinstance(v, float) and 0 < v < 1)
    row[key] = round(1 - row[key], 6)
    return json.dumps(row)


def _foreign_store(case: Path, paths: dict) -> None:
    """Another application's SQLite file where bench keeps its store."""
    import sqlite3

    (case / "out").mkdir()
    db = sqlite3.connect(case / "out" / "results.sqlite")
    db.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
    db.execute("INSERT INTO contacts VALUES ('Ada', '555-0100')")
    db.commit()
    db.close()


def _linked(name: str, target_is_victim: bool = True):
    """A ``setup``: ``{case}/out/<name>`` is a symbolic link to a file of the victim's."""

    def setup(case: Path, paths: dict) -> None:
        (case / "out").mkdir()
        victim = case / "victim.txt"
        victim.write_text("the victim's own file\n", encoding="utf-8")
        os.symlink(victim if target_is_victim else case / "nowhere", case / "out" / name)

    return setup


def _victim_untouched(case: Path, paths: dict, result) -> None:
    assert (case / "victim.txt").read_text(encoding="utf-8") == "the victim's own file\n"


def _image_folder_with_loop(case: Path, paths: dict) -> None:
    from fake_data import write_image_folder

    for split, seed in (("train", 1), ("test", 2)):
        write_image_folder(case / "ds" / split, ["a", "b"], 6, (16, 16), "png", seed=seed)
    os.symlink(case / "ds" / "test", case / "ds" / "test" / "a" / "loop")

#: the bad inputs of issue 22: point 11's, then one per other point that a command line reaches
CASES = [
    # devices this machine cannot run a model on
    Case("train-device-mps", ("train", "--device", "mps", "--out", "{case}/run"),
         "device 'mps' cannot run models here"),
    Case("train-device-meta", ("train", "--device", "meta", "--out", "{case}/run"),
         "device 'meta' cannot run models here"),
    Case("bench-device-meta", ("bench", "--models", "{run}", *EVAL[:-2], "--device", "meta",
                               "--out", "{case}/out"), "device 'meta' cannot run models here"),
    Case("report-device-meta", ("report", "{results}", "--device", "meta",
                                "--out", "{case}/report"), "device 'meta' cannot run models here"),
    # --out that is a file, or under one
    Case("export-out-file", ("export", "{results}", "--out", "{file}"),
         "it exists as a file, where a folder is needed"),
    Case("report-out-file", ("report", "{results}", "--out", "{file}", "--no-figures"),
         "it exists as a file, where a folder is needed"),
    Case("export-out-under-file", ("export", "{results}", "--out", "{file}/sub"),
         "a part of it is a file, where a folder is needed"),
    Case("hf-card-file", ("export", "--model", "{run}", "--hf-card", "{file}"),
         "it exists as a file, where a folder is needed"),
    Case("patch-into-folder", ("export", "--model", "{run}", "--pytorch-ood-patch", "{dir}"),
         "it is a folder, where a file is needed"),
    # paths longer than the file system takes
    Case("export-out-long", ("export", "{results}", "--out", "{long}/x"), "too long"),
    Case("report-out-long", ("report", "{results}", "--out", "{long}", "--no-figures"),
         "too long"),
    Case("report-runs-long", ("report", "{results}", "--runs", "{long}",
                              "--out", "{case}/report"), "too long"),
    Case("train-out-long", ("train", "--device", "cpu", "--out", "{long}"), "too long"),
    Case("train-data-root-long", ("train", "--dataset", "cifar10", "--data-root", "{long}",
                                  "--device", "cpu", "--out", "{case}/run"), "too long"),
    Case("bench-data-root-long", ("bench", "--benchmark", "cifar10", "--models", "{run}",
                                  *EVAL, "--data-root", "{long}", "--out", "{case}/out"),
         "too long"),
    Case("bench-out-long", ("bench", "--models", "{run}", *EVAL, "--out", "{long}"),
         "too long"),
    Case("export-model-long", ("export", "--model", "{long}"), "too long"),
    Case("train-t-from-long", ("train", "--device", "cpu", "--t-from", "{long}",
                               "--out", "{case}/run"), "too long"),
    # scores that are not numbers
    Case("nan-scores", ("bench", "--models", "{run}", *EVAL, "--detectors", "energy(t=0)",
                        "--out", "{case}/out"),
         ("the detector energy gave ", " NaN scores of ", " on the ID test set with the model ",
          "digits-cnn/digits/logitnorm/s0")),
    Case("nan-model", ("bench", "--models", "{case}/hostile", *EVAL, "--out", "{case}/out"),
         ("the detector msp gave ", " NaN scores of ", " on the ID test set with the model "),
         setup=_hostile_run(_nan_weights)),
    # detector arguments the class refuses
    Case("detector-unknown-argument", ("bench", "--models", "{run}", *EVAL, "--detectors",
                                       "msp(foo=1)", "--out", "{case}/out"),
         ("the detector msp(foo=1) cannot be built", "unexpected keyword argument 'foo'")),
    # detector arguments the class takes, but that fail only when it is fitted or scores
    Case("detector-fails-to-score", ("bench", "--models", "{run}", *EVAL, "--detectors",
                                     "msp,knn(k=0)", "--out", "{case}/out"),
         ("the detector knn(k=0) failed to score the ID test set with the model ",
          "digits-cnn/digits/logitnorm/s0", "Expected n_neighbors > 0")),
    Case("detector-fails-to-fit", ("bench", "--models", "{run}", *EVAL, "--detectors",
                                   "knn(k=100000)", "--out", "{case}/out"),
         ("the detector knn(k=100000) could not be fitted", "digits-cnn/digits/logitnorm/s0")),
    Case("detector-text-setting", ("bench", "--models", "{run}", *EVAL, "--detectors",
                                   "odin(eps='abc')", "--out", "{case}/out"),
         ("the detector odin(eps=abc) failed to score the ID test set", "TypeError")),
    Case("detector-nan-setting", ("bench", "--models", "{run}", *EVAL, "--detectors",
                                  "energy(t=nan)", "--out", "{case}/out"),
         "nan is not a value a detector setting can take"),
    Case("detector-minus-inf-setting", ("bench", "--models", "{run}", *EVAL, "--detectors",
                                        "odin(eps=-inf)", "--out", "{case}/out"),
         ("the detector odin gave ", " NaN scores of ")),
    # counts out of range
    Case("threads-100000", ("train", "--threads", "100000", "--device", "cpu",
                            "--out", "{case}/run"), "CPU cores of this machine", process=True),
    Case("tune-t-noise-n-0", ("tune-t", "--noise-n", "0", "--out", "{case}/t"),
         "--noise-n must be >= 1, got 0"),
    Case("tune-t-noise-n-negative", ("tune-t", "--noise-n", "-5", "--out", "{case}/t"),
         "--noise-n must be >= 1, got -5"),
    # files of a folder made by someone else
    Case("bench-request-not-json",
         ("bench", "--losses", "logitnorm", "--seeds", "0", "--epochs", "1", *EVAL,
          "--out", "{case}/results"),
         "bench_request.json is damaged", "warning", _damaged_request, _bench_reused),
    Case("report-runs-damaged-metrics",
         ("report", "{results}", "--runs", "{run}", "{case}/hostile", "--out", "{case}/report"),
         "hostile skipped: ", "warning",
         _hostile_run(lambda run: (run / "metrics.jsonl").write_text("{", encoding="utf-8")),
         _good_run_reported),
    Case("report-runs-metrics-list",
         ("report", "{results}", "--runs", "{run}", "{case}/hostile", "--out", "{case}/report"),
         "hostile skipped: ", "warning",
         _hostile_run(lambda run: (run / "metrics.jsonl").write_text("[1]\n", encoding="utf-8")),
         _good_run_reported),
    Case("report-runs-damaged-config",
         ("report", "{results}", "--runs", "{run}", "{case}/hostile", "--out", "{case}/report"),
         "hostile skipped: ", "warning",
         _hostile_run(lambda run: (run / "config.json").write_text("[]", encoding="utf-8")),
         _good_run_reported),
    # a reader that stops reading
    Case("list-closed-pipe", ("list",), expect="quiet", process=True),
    # point 1: a lock file that is a link (to a victim's file, or dangling)
    Case("lock-links-to-victim", ("bench", "--models", "{run}", *EVAL, "--out", "{case}/out"),
         ".lock", setup=_linked(".lock"), then=_victim_untouched),
    Case("lock-dangling-link", ("bench", "--models", "{run}", *EVAL, "--out", "{case}/out"),
         ".lock", setup=_linked(".lock", target_is_victim=False)),
    # point 2: a card naming a function where an architecture class belongs
    Case("card-arch-os-system", ("export", "--model", "{case}/hostile"),
         "not in the table of known architectures",
         setup=_resealed_run(arch_class="os.system")),
    # point 3: a store that is a link, or another application's database
    Case("store-links-to-victim", ("bench", "--models", "{run}", *EVAL, "--out", "{case}/out"),
         "results.sqlite", setup=_linked("results.sqlite"), then=_victim_untouched),
    Case("store-foreign-sqlite", ("bench", "--models", "{run}", *EVAL, "--out", "{case}/out"),
         "results.sqlite", setup=_foreign_store),
    # point 4 and bad card values: numbers that would choose memory, or are not numbers
    Case("card-width-9000", ("export", "--model", "{case}/hostile"),
         "nothing was allocated",
         setup=_resealed_run(arch_kwargs=lambda card: {**card["arch_kwargs"], "width": 9000})),
    Case("card-width-negative", ("export", "--model", "{case}/hostile"),
         "rejects the arguments",
         setup=_resealed_run(arch_kwargs=lambda card: {**card["arch_kwargs"], "width": -1})),
    Case("card-t-not-a-number", ("export", "--model", "{case}/hostile"), "'t' is 'abc'",
         setup=_resealed_run(t="abc")),
    # point 6 and damaged store rows: a changed digit, a row that is not JSON
    Case("store-changed-digit", ("export", "{case}/results"), "changed after it was written",
         setup=_results_copy(lambda store: _edit_stored_cell(store, _one_digit_changed))),
    Case("store-row-not-json", ("export", "{case}/results"), "results.sqlite",
         setup=_results_copy(lambda store: _edit_stored_cell(store, lambda text: text[:-3]))),
    # point 8: a link loop inside an image-folder dataset
    Case("dataset-link-loop", ("train", "--dataset", "{case}/ds", "--epochs", "1",
                               "--device", "cpu", "--out", "{case}/run"),
         "loop", setup=_image_folder_with_loop),
    # point 9: an empty output path
    Case("train-out-empty", ("train", "--device", "cpu", "--out", ""), "empty path"),
    Case("bench-out-empty", ("bench", "--models", "{run}", *EVAL, "--out", ""), "empty path"),
]


def make_paths(root: Path) -> dict:
    """The fixture's folders under ``root``: a bench folder with one trained run (digits,
    LogitNorm, one epoch, MSP), a regular file, an empty folder."""
    from logitnorm_plugin.workflows import bench

    results = root / "results"
    bench.run(out=results, losses=["logitnorm"], seeds=[0], epochs=1, detectors=["msp"],
              device="cpu", progress=False, plots=False, stdout=io.StringIO())
    (run,) = (results / "runs").iterdir()
    (root / "a-file").write_text("not a folder\n", encoding="utf-8")
    (root / "a-folder").mkdir()
    return {"results": results, "run": run, "file": root / "a-file", "dir": root / "a-folder",
            "long": root / LONG}


def run_case(case: Case, paths: dict, case_dir: Path) -> subprocess.CompletedProcess:
    """Run ``case`` in ``case_dir`` (made here) as a user would."""
    case_dir.mkdir(parents=True)
    if case.setup is not None:
        case.setup(case_dir, paths)
    names = {k: str(v) for k, v in paths.items()} | {"case": str(case_dir)}
    argv = [str(SCRIPT), *(a.format(**names) for a in case.argv)]
    if not case.process:
        return _in_process(argv, case_dir)
    if case.expect != "quiet":
        return subprocess.run(argv, capture_output=True, text=True, cwd=case_dir, env=ENV,
                              timeout=300)
    # stdout: a pipe whose reader is already gone (`logitnorm-ood list | head -0`)
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True,
                              cwd=case_dir, env=ENV, timeout=300)
    finally:
        os.close(write)
    return subprocess.CompletedProcess(argv, proc.returncode, "", proc.stderr)


def _in_process(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    """``argv`` through :func:`logitnorm_plugin.cli.main` in this process, as the console
    script runs it: its stdout and stderr captured, warnings shown (not raised, as pytest's
    filter would), an exception printed as the interpreter prints it (status 1)."""
    from logitnorm_plugin.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("default")
            try:
                status = main(argv[1:])
            except SystemExit as exc:  # argparse
                status = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # what the user would see: the point of this table
                traceback.print_exc()
                status = 1
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())


def check(case: Case, result: subprocess.CompletedProcess, case_dir: Path, paths: dict):
    """What ``case.expect`` asks of the result (an ``AssertionError`` naming what failed)."""
    shown = f"status {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    says = (case.says,) if isinstance(case.says, str) else case.says
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = result.stderr.splitlines()
    if case.expect == "error":
        assert result.returncode == 2, shown
        errors = [line for line in lines if line.startswith("logitnorm-ood ")
                  and ": error: " in line]
        assert len(errors) == 1, shown
        assert all(text in errors[0] for text in says), shown
    elif case.expect == "warning":
        assert result.returncode == 0, shown
        assert any(line.startswith("logitnorm-ood: ") and all(text in line for text in says)
                   for line in lines), shown
        assert not any(": error: " in line for line in lines), shown
    else:
        assert case.expect == "quiet", case.expect
        assert result.returncode == 141 and result.stderr == "", shown
    if case.then is not None:
        case.then(case_dir, paths, result)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_paths(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_not_a_traceback(case, paths, tmp_path):
    check(case, run_case(case, paths, tmp_path / case.id), tmp_path / case.id, paths)


def test_the_table_names_each_case_once():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert all(c.expect in ("error", "warning", "quiet") for c in CASES)


def main() -> int:
    """Every case of the table, with the tracebacks it printed; the count at the end."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_paths(Path(tmp))
        total = failed = 0
        for case in CASES:
            case_dir = Path(tmp) / "cases" / case.id
            result = run_case(case, paths, case_dir)
            tracebacks = (result.stdout + result.stderr).count("Traceback")
            try:
                check(case, result, case_dir, paths)
                verdict = "ok"
            except AssertionError:
                verdict, failed = "FAILS", failed + 1
            total += tracebacks
            last = (result.stderr.strip().splitlines() or [""])[-1][:110]
            print(f"{case.id:28} status {result.returncode:3}  tracebacks {tracebacks}  "
                  f"{verdict:5}  {last}")
        print(f"{len(CASES)} bad inputs: {total} tracebacks, {failed} not answered as "
              "the table asks")
    return 1 if total or failed else 0


if __name__ == "__main__":
    sys.exit(main())


@pytest.mark.parametrize("error", [
    FileNotFoundError(2, "No such file or directory", "missing.json"),  # ENOENT: often a bug
    OSError(5, "Input/output error", "model.pt"),
    RuntimeError("a bug"),
    BrokenPipeError(32, "Broken pipe"),  # a pipe other than stdout (whose reader is here)
])
def test_other_exceptions_keep_their_traceback(error, monkeypatch):
    """Only bad input is one line: a command failing otherwise propagates (a traceback)."""
    from logitnorm_plugin.cli import list as list_command
    from logitnorm_plugin.cli import main

    def fail(args):
        raise error

    monkeypatch.setattr(list_command, "run", fail)
    with pytest.raises(type(error)):
        main(["list"])


def test_path_error_message_names_the_path_in_one_line(tmp_path):
    import errno

    from logitnorm_plugin._core.path_errors import path_error_message

    long = str(tmp_path / ("x\ny" * 200))
    text = path_error_message(OSError(errno.ENAMETOOLONG, "File name too long", long))
    assert "\n" not in text and len(text) < 300 and "too long" in text
    assert f"({len(' '.join(long.split()))} characters)" in text
    (tmp_path / "f").write_text("x", encoding="utf-8")
    exists = [path_error_message(FileExistsError(errno.EEXIST, "File exists", str(p)))
              for p in (tmp_path / "f", tmp_path)]
    assert "exists as a file, where a folder is needed" in exists[0]
    assert "exists already" in exists[1]
    # a rename of a temporary onto a folder names the folder, not the temporary
    renamed = IsADirectoryError(errno.EISDIR, "Is a directory", ".t.tmp", None, str(tmp_path))
    assert path_error_message(renamed).startswith(f"cannot use {str(tmp_path)!r}: it is a folder")
    assert path_error_message(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None
    assert path_error_message(ValueError("x")) is None
