"""Fault injection: files that other people made, commands that die, commands that run at once.

Real processes where it matters: the installed console script ``logitnorm-ood`` (next to
``sys.executable``) for hostile cards and concurrency, and ``python -c`` wrappers that SIGKILL
themselves at chosen points of training. The rest runs the same command line in-process
(``logitnorm_plugin.cli.main``), with the operating system's own failures provoked where
possible (``/dev/full`` for a full disk, SQLite's page limit for a full store, a damaged
database page, a file where a folder should be). Digits, a narrow CNN, one seed, few epochs.
"""

import hashlib
import io
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from logitnorm_plugin._core import atomic, locks
from logitnorm_plugin._core.digests import json_sha256
from logitnorm_plugin._core.errors import ModelIntegrityError, UntrustedFileError
from logitnorm_plugin.cli import main
from logitnorm_plugin.registry import entry_points as registry
from logitnorm_plugin.store.results import STORE_FILE, ResultStore, open_results
from logitnorm_plugin.training.loop import train
from logitnorm_plugin.training.runs import load_trained
from logitnorm_plugin.workflows import bench

SCRIPT = Path(sys.executable).parent / "logitnorm-ood"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SMALL = dict(dataset="digits", arch_kwargs={"width": 8}, device="cpu", progress=False)
TRAIN = ["train", "--dataset", "digits", "--arch-arg", "width=8", "--device", "cpu", "--quiet"]
BENCH = ["--detectors", "msp", "--no-progress", "--no-plots"]




@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """3 deterministic epochs in one go: what every interrupted run must end up as."""
    out = tmp_path_factory.mktemp("ref") / "run"
    return train(out=out, epochs=3, deterministic=True, **SMALL).run_dir


_STARTED = []


@pytest.fixture(autouse=True)
def no_process_left():
    """A failing test must not leave its processes running."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def started(proc):
    _STARTED.append(proc)
    return proc


@pytest.fixture(scope="module")
def early(reference, tmp_path_factory):
    """The slow real processes, started together at once so that they run while the other
    tests run in this process: a bench on a hostile card, and trainings that SIGKILL
    themselves at chosen points."""
    root = tmp_path_factory.mktemp("early")
    marker = root / "PWNED"
    hostile = copy_run(reference, root / "hostile")
    rewrite_card(hostile, arch_class="os.system", arch_kwargs={"command": f"touch {marker}"})
    procs = {"hostile": script("bench", "--models", hostile, "--out", root / "out", *BENCH,
                               keep=True)}
    # a bench that must wait: this process holds its --out until the test lets it go
    gate = locks.hold(root / "bench_out")
    gate.__enter__()
    procs["bench"] = script("bench", "--seeds", "0", "--losses", "logitnorm", "--epochs", "4",
                            "--out", root / "bench_out", *BENCH, keep=True)
    for point, n in KILL_POINTS.items():
        procs[point] = (subprocess.Popen(
            [sys.executable, "-c", KILLER, point, str(n), *TRAIN, "--epochs", "3",
             "--deterministic", "--out", str(root / point)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV))
    try:
        yield root, marker, procs, gate
    finally:
        gate.__exit__(None, None, None)  # a second exit (after the test's) does nothing
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def script(*argv, cwd=None, keep=False):
    """The console script, started; ``keep``: the caller ends it (else the test's teardown)."""
    assert SCRIPT.exists(), "the console script logitnorm-ood is not installed"
    proc = subprocess.Popen([str(SCRIPT), *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd)
    return proc if keep else started(proc)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def one_line_error(code, err, command, *words):
    """Exit status 2 and the error as one line on stderr (other lines are notes of ours)."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"logitnorm-ood {command}:")]
    assert len(errors) == 1, err
    assert all(line.startswith("logitnorm-ood") for line in err.splitlines() if line), err
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return Path(dst)


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).iterdir()) if p.is_file()}


def rewrite_card(run, seal=True, **changes):
    """Change a model card; ``seal``: as a forger would, with a correct card_sha256."""
    path = Path(run) / "model.json"
    card = json.loads(path.read_text())
    card.update(changes)
    if seal:
        card.pop("card_sha256", None)
        card["card_sha256"] = json_sha256(card)
    path.write_text(json.dumps(card, indent=2))


def same_weights(a, b):
    sa = torch.load(Path(a) / "model.pt", weights_only=True)
    sb = torch.load(Path(b) / "model.pt", weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Hostile:
    """Unpickling this runs a command: what a hostile checkpoint or weights file holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# -- 1. a model card never chooses code ----------------------------------------------------------


def test_hostile_card_runs_nothing(reference, early, tmp_path):
    root, marker, _, _ = early
    with pytest.raises(UntrustedFileError, match="'os.system'.*not in the table"):
        load_trained(root / "hostile")
    assert not marker.exists()
    # the card's own digest: an edit that was not resealed is refused before anything else
    edited = copy_run(reference, tmp_path / "edited")
    rewrite_card(edited, seal=False, description="better than it was")
    with pytest.raises(ModelIntegrityError, match="changed after training"):
        load_trained(edited)
    # a flipped byte inside the card (still valid JSON)
    flipped = copy_run(reference, tmp_path / "flipped")
    text = (flipped / "model.json").read_text()
    (flipped / "model.json").write_text(text.replace('"recipe": "digits"', '"recipe": "digitz"'))
    with pytest.raises(ModelIntegrityError, match="card_sha256"):
        load_trained(flipped)


def test_an_unsealed_card_is_refused_until_its_owner_seals_it(reference, tmp_path):
    from logitnorm_plugin.training.runs import seal_card

    old = copy_run(reference, tmp_path / "old")
    card = json.loads((old / "model.json").read_text())
    del card["card_sha256"]
    (old / "model.json").write_text(json.dumps(dict(card, format=1)))
    with pytest.raises(ModelIntegrityError, match="carries no card_sha256.*seal_card"):
        load_trained(old)
    seal_card(old)
    assert load_trained(old) is not None
    (old / "model.pt").write_bytes(b"other weights")
    with pytest.raises(ModelIntegrityError, match="not sealing it"):
        seal_card(old)


def test_hostile_weights_and_checkpoint_are_not_unpickled(reference, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    weights = copy_run(reference, tmp_path / "weights")
    torch.save({"x": Hostile(marker)}, weights / "model.pt")
    rewrite_card(weights, sha256=hashlib.sha256((weights / "model.pt").read_bytes()).hexdigest())
    code, err, _ = cli(capsys, "bench", "--models", weights, "--out", tmp_path / "o", *BENCH)
    line = one_line_error(code, err, "bench", "model.pt", "may be hostile")
    assert "weights_only" not in line and not marker.exists()

    ckpt = copy_run(reference, tmp_path / "ckpt")
    (ckpt / "model.pt").unlink()
    (ckpt / "model.json").unlink()
    torch.save({"format": 2, "x": Hostile(marker)}, ckpt / "checkpoint.pt")
    code, err, _ = cli(capsys, *TRAIN, "--epochs", "3", "--out", ckpt, "--resume")
    line = one_line_error(code, err, "train", "checkpoint.pt", "not a checkpoint of this trainer",
                          "may be hostile")
    assert "weights_only" not in line and not marker.exists()


# -- 2. a run folder belongs to one configuration ------------------------------------------------


def test_finished_run_is_never_overwritten_by_another_configuration(reference, tmp_path, capsys):
    run = copy_run(reference, tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    before = digests(run)
    other = [*TRAIN, "--loss", "cross_entropy", "--seed", "7", "--epochs", "1", "--out", run]
    code, err, _ = cli(capsys, *other, "--resume")
    one_line_error(code, err, "train", "config.json records another configuration",
                   "loss: run folder has 'logitnorm', now 'cross_entropy'", "seed:")
    code, err, _ = cli(capsys, *other)
    one_line_error(code, err, "train", "already holds a training run", "--resume")
    # only the card is left: its configuration is compared too
    (run / "config.json").unlink()
    (run / "metrics.jsonl").unlink()
    code, err, _ = cli(capsys, *other, "--resume")
    one_line_error(code, err, "train", "model.json records another configuration")
    assert {k: v for k, v in digests(run).items() if k in before} == {
        k: v for k, v in before.items() if (run / k).exists()}
    # --resume where nothing is (a mistyped path) starts nothing and creates nothing
    code, err, _ = cli(capsys, *other, "--out", tmp_path / "typo", "--resume")
    one_line_error(code, err, "train", "nothing to resume", "typo")
    assert not (tmp_path / "typo").exists()


# -- 3. checkpoints are verified; SIGKILL at any point resumes to the same weights -------------


def _stop_after(epoch):
    def callback(record):
        if record["epoch"] == epoch:
            raise KeyboardInterrupt  # what Ctrl-C right after that checkpoint does
    return callback


def _flip_middle(path, n=2000):
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - n // 2
    data[start:start + n] = bytes(b ^ 0xFF for b in data[start:start + n])
    path.write_bytes(bytes(data))


def test_damaged_checkpoint_is_never_resumed_silently(reference, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(out=out, epochs=3, deterministic=True, callback=_stop_after(2), **SMALL)
    assert torch.load(out / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1
    _flip_middle(out / "checkpoint.pt")
    spare = copy_run(out, tmp_path / "both_damaged")
    # documented fallback: the previous intact checkpoint, said on stderr
    code, err, _ = cli(capsys, *TRAIN, "--epochs", "3", "--deterministic", "--out", out,
                       "--resume")
    assert code == 0, err
    assert "checkpoint.pt" in err and "is damaged" in err
    assert "resuming from" in err and "checkpoint.prev.pt' (epoch 1) instead" in err
    assert same_weights(out, reference)
    card = json.loads((out / "model.json").read_text())
    assert card["sha256"] == json.loads((reference / "model.json").read_text())["sha256"]
    assert not (out / "checkpoint.prev.pt").exists()  # a finished run keeps one checkpoint
    # no intact checkpoint at all: one line naming the file, nothing written
    _flip_middle(spare / "checkpoint.prev.pt")
    before = digests(spare)
    code, err, _ = cli(capsys, *TRAIN, "--epochs", "3", "--out", spare, "--resume")
    one_line_error(code, err, "train", "checkpoint.pt", "damaged", "another --out folder")
    assert digests(spare) == before


#: where the trainings of :func:`early` kill themselves: point -> at which call
KILL_POINTS = {"rename": 2, "metrics": 2, "card": 1}

KILLER = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    from logitnorm_plugin._core import atomic
    from logitnorm_plugin.training import runs
    point, n = sys.argv[1], int(sys.argv[2])
    calls = []

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "rename":  # the new checkpoint is written and fsynced, the rename never happens
        real = os.replace
        def replace(src, dst):
            if Path(dst).name == "checkpoint.pt":
                calls.append(1)
                if len(calls) == n:
                    die()
            return real(src, dst)
        os.replace = replace
    elif point == "metrics":  # the checkpoint is in place, metrics.jsonl is not rewritten
        real = runs.write_metrics
        def write_metrics(*args):
            calls.append(1)
            if len(calls) == n:
                die()
            return real(*args)
        runs.write_metrics = write_metrics
    elif point == "card":  # model.pt is written, the model card is not
        real = atomic.write_json
        def write_json(path, *args, **kwargs):
            if Path(path).name == "model.json":
                die()
            return real(path, *args, **kwargs)
        atomic.write_json = write_json
    from logitnorm_plugin.cli import main
    sys.exit(main(sys.argv[3:]))
''')


# -- 4. concurrent commands wait or fail, never report another run's numbers (at the end) -------


def _wait_until_locked(folder, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while locks.busy(folder) is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first process never took the lock"
        time.sleep(0.02)


# -- 5. a table never averages two detector configurations --------------------------------------


FAKEPLUG = '''
from logitnorm_plugin.detector import LogitNormDetector
from pytorch_ood.api import DetectorInfo, Paper, Task


class FakeLogitNorm(LogitNormDetector):
    """Another package's 'logitnorm': the opposite scores."""

    info = DetectorInfo(paper=Paper(title="Fake", venue="arXiv", year=2026,
                                    url="https://example.org"), tasks={Task.CLASSIFICATION})

    def predict_logits(self, logits):
        return -super().predict_logits(logits)
'''


def _fakeplug(root):
    dist = root / "fakeplug-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[pytorch_ood.detectors]\nlogitnorm = fakeplug_detector:FakeLogitNorm\n")
    (root / "fakeplug_detector.py").write_text(FAKEPLUG)


def _numbers(result):
    # NaN (the standard deviation of one seed) compares unequal to itself: None stands for it
    return [{k: None if isinstance(v, float) and math.isnan(v) else v
             for k, v in e.items() if k not in ("Detector",)} for e in result["aggregate"]]


def test_bench_table_holds_only_the_configurations_it_asked_for(reference, tmp_path,
                                                                monkeypatch):
    kw = dict(models=[str(reference)], progress=False, plots=False)
    fresh = bench.run(detectors=["logitnorm"], out=tmp_path / "fresh", stdout=io.StringIO(),
                      **kw)
    out = tmp_path / "out"
    t1 = bench.run(detectors=[("logitnorm", {"t": 1.0})], out=out, stdout=io.StringIO(), **kw)
    assert [e["Detector"] for e in t1["aggregate"]] == ["logitnorm(t=1)"]
    assert "logitnorm(t=1)" in t1["table"]
    _fakeplug(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry.refresh()
    with pytest.warns(registry.RegistryWarning, match="fakeplug"):
        fake = bench.run(detectors=["fakeplug:logitnorm"], out=out, stdout=io.StringIO(), **kw)
    assert [e["Detector"] for e in fake["aggregate"]] == ["fakeplug:logitnorm"]
    sys.path.remove(str(tmp_path / "site"))
    registry.refresh()
    plain = bench.run(detectors=["logitnorm"], out=out, stdout=io.StringIO(), **kw)
    assert _numbers(plain) == _numbers(fresh)
    assert plain["table"] == fresh["table"]
    with open_results(out) as store:
        (cfg,) = store.config_ids()
        labels = sorted(e["Detector"] for e in store.aggregate(cfg))
    assert labels == ["fakeplug:logitnorm", "logitnorm", "logitnorm(t=1)"]


# -- 6. nothing is written outside the folder asked for; snippets are parsed, not run -----------


def test_export_never_leaves_weights_out(reference, tmp_path, capsys):
    run = copy_run(reference, tmp_path / "run")
    rewrite_card(run, arch="../../escaped_dir")
    upload = tmp_path / "a" / "b" / "upload"
    code, err, out = cli(capsys, "export", "--model", run, "--weights-out", upload)
    one_line_error(code, err, "export", "'../../escaped_dir'", "not a plain name")
    assert out == "" and not list(tmp_path.rglob("escaped_dir*"))
    code, err, _ = cli(capsys, "export", "--model", reference, "--key", "../../x",
                       "--weights-out", upload)
    one_line_error(code, err, "export", "--key", "'..'")
    assert not list(tmp_path.rglob("model-*.pt"))


def test_model_entry_snippets_are_parsed_not_evaluated(reference, tmp_path):
    from logitnorm_plugin.reporting import model_entry as upstream

    marker = tmp_path / "PWNED"
    escape = ("[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "
              "'catch_warnings'][0]()._module.__builtins__['__import__']('os').system("
              f"'touch {marker}')")
    for snippet in (escape, f"ModelEntry(key={escape})", "ModelEntry(**{'key': 'k'})",
                    "[ModelEntry(key='k')][0]", "ModelEntry(preprocessing=print('x'))"):
        with pytest.raises(UntrustedFileError, match="not a ModelEntry snippet"):
            upstream.build_model_entry(snippet)
    assert not marker.exists()
    good = upstream.model_entry_snippet(reference)
    assert upstream.build_model_entry(good).sha256 == json.loads(
        (reference / "model.json").read_text())["sha256"]


# -- 7. every user error is one line, exit status 2 ---------------------------------------------


def _deny(monkeypatch, folder):
    """Make ``folder`` read-only: really, or (as root, whom permissions do not stop) by
    refusing to create anything under it as the kernel would."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    real_mkdir, real_open = Path.mkdir, os.open

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(folder) + os.sep):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder) + os.sep) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def test_unwritable_out_and_out_that_is_a_file(reference, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    code, err, _ = cli(capsys, *TRAIN, "--epochs", "1", "--out", a_file)
    one_line_error(code, err, "train", "a_file", "is a file, not a folder")
    code, err, _ = cli(capsys, "bench", "--models", reference, "--out", a_file / "sub", *BENCH)
    one_line_error(code, err, "bench", "a_file", "is a file, not a folder")
    _deny(monkeypatch, tmp_path / "ro")
    code, err, _ = cli(capsys, *TRAIN, "--epochs", "1", "--out", tmp_path / "ro" / "run")
    one_line_error(code, err, "train", "permission denied", "ro")
    code, err, _ = cli(capsys, "bench", "--models", reference, "--out", tmp_path / "ro" / "b",
                       *BENCH)
    one_line_error(code, err, "bench", "permission denied", "ro")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_while_training(tmp_path, capsys, monkeypatch):
    real = tempfile.mkstemp

    def full(*args, **kwargs):
        fd, path = real(*args, **kwargs)
        if ".checkpoint.pt." in os.path.basename(path):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
        return fd, path

    monkeypatch.setattr(atomic.tempfile, "mkstemp", full)
    code, err, _ = cli(capsys, *TRAIN, "--epochs", "1", "--out", tmp_path / "run")
    one_line_error(code, err, "train", "checkpoint.pt", "disk is full", "--resume")
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_disk_full_and_damaged_or_old_result_stores(reference, tmp_path, capsys, monkeypatch):
    argv = ["bench", "--models", reference, *BENCH]
    real = sqlite3.connect

    def tiny(*args, **kwargs):
        con = real(*args, **kwargs)
        con.execute("PRAGMA max_page_count = 1")  # no room beyond what the file has
        return con

    monkeypatch.setattr(sqlite3, "connect", tiny)
    code, err, _ = cli(capsys, *argv, "--out", tmp_path / "full")
    one_line_error(code, err, "bench", "results.sqlite", "database or disk is full")
    monkeypatch.setattr(sqlite3, "connect", real)

    out = tmp_path / "out"
    assert cli(capsys, *argv, "--out", out)[0] == 0
    store = out / STORE_FILE
    # an old schema: refused with advice that works
    db = sqlite3.connect(store)
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    code, err, _ = cli(capsys, *argv, "--out", out)
    one_line_error(code, err, "bench", "schema version 1", "--force")
    code, err, _ = cli(capsys, *argv, "--out", out, "--force")
    assert code == 0, err
    assert (out / f"{STORE_FILE}.schema-1.bak").is_file()
    # a damaged page: refused in one line; --force starts a new store, the old one is kept
    data = bytearray(store.read_bytes())
    page = 4096
    assert len(data) >= 4 * page
    data[2 * page:4 * page] = b"\x5a" * (2 * page)
    store.write_bytes(bytes(data))
    code, err, _ = cli(capsys, *argv, "--out", out)
    one_line_error(code, err, "bench", "results.sqlite", "damaged", "--force")
    code, err, _ = cli(capsys, *argv, "--out", out, "--force")
    assert code == 0, err
    assert (out / f"{STORE_FILE}.damaged.bak").is_file()
    with ResultStore(store) as fresh:
        assert fresh.count() == 4


@pytest.mark.parametrize("seed", ["-5", "4294967296"])
def test_seed_out_of_range(seed, tmp_path, capsys):
    code, err, _ = cli(capsys, *TRAIN, "--seed", seed, "--out", tmp_path / "run")
    one_line_error(code, err, "train", "seed must be an integer in 0..4294967295", seed)
    assert not (tmp_path / "run").exists()


def test_two_models_with_one_label(reference, tmp_path, capsys):
    # two folders of one card key get their folder names as labels (tests/test_first_hour.py);
    # one label given to both is refused in one line
    twin = copy_run(reference, tmp_path / "twin")
    code, err, _ = cli(capsys, "bench", "--models", f"same={reference}", f"same={twin}",
                       "--out", tmp_path / "o", *BENCH)
    one_line_error(code, err, "bench", "--models", "'same'", "separate runs")


# -- 8. temporaries of interrupted writes ------------------------------------------------------


def test_stale_temporaries_only_are_removed(tmp_path):
    old = time.time() - 3600
    stale = [atomic.temporary_path(tmp_path / "checkpoint.pt"),
             atomic.temporary_path(tmp_path / "model.json")]
    kept = [tmp_path / ".checkpoint.pt.abc.tmp",  # not the atomic module's naming
            tmp_path / "checkpoint.pt.ab12cd_9.tmp", tmp_path / "notes.tmp",
            tmp_path / ".checkpoint.pt.ab12cd_9.tmp"]  # its shape, without our mark
    for p in stale + kept:
        p.write_bytes(b"x")
        os.utime(p, (old, old))
    mine = atomic.temporary_path(tmp_path / "metrics.jsonl")  # newer than this process
    mine.write_bytes(b"x")
    assert sorted(atomic.remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept + [mine])


# -- the processes started early (see :func:`early`) ---------------------------------------------


def test_hostile_card_through_the_console_script(early):
    """1. ``bench --models`` on a sealed card whose arch_class is ``os.system``."""
    root, marker, procs, _ = early
    _, err = procs["hostile"].communicate(timeout=300)
    one_line_error(procs["hostile"].returncode, err, "bench", "os.system", "not in the table")
    assert not marker.exists()
    assert not (root / "out" / STORE_FILE).exists()


def test_sigkill_at_any_point_resumes_bit_for_bit(reference, early, monkeypatch):
    root, _, procs, _ = early
    for point in KILL_POINTS:
        procs[point].communicate(timeout=300)
        assert procs[point].returncode == -signal.SIGKILL, point
    # what each kill left behind
    rename = root / "rename"
    stale = sorted(p.name for p in rename.iterdir() if atomic.TEMPORARY_NAME.match(p.name))
    assert any(n.startswith(".checkpoint.pt.") for n in stale), stale
    assert torch.load(rename / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (root / "card" / "model.json").exists()
    assert (root / "card" / "model.pt").exists()
    # a later command (a process started after the kill) cleans up and resumes
    monkeypatch.setattr(atomic, "_STARTED", time.time() + 1)
    for point in KILL_POINTS:
        out = root / point
        result = train(out=out, epochs=3, deterministic=True, resume=True, **SMALL)
        assert same_weights(out, reference), point
        assert result.card["sha256"] == json.loads((reference / "model.json").read_text())[
            "sha256"]
        assert [r["epoch"] for r in result.metrics] == [1, 2, 3]
        assert not [p for p in out.iterdir() if atomic.TEMPORARY_NAME.match(p.name)], point
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in
                                                              reference.iterdir())


def test_two_benches_on_one_out_folder(early, capsys):
    """4. Two benches on one --out: the second waits, then refuses the first's run folder."""
    root, _, procs, gate = early
    out, first = root / "bench_out", procs["bench"]
    gate.__exit__(None, None, None)  # the first bench (epochs 4) may go now
    _wait_until_locked(out, first)
    common = ["bench", "--seeds", "0", "--losses", "logitnorm", "--out", out, *BENCH]
    code, err, _ = cli(capsys, *common, "--epochs", "2")  # waits, then finds epochs 4 there
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert "waiting for the results folder" in err and f"pid {first.pid}" in err
    one_line_error(code, err, "bench", "epochs: run folder has 4, now 2")
    card = json.loads((out / "runs" / "digits-logitnorm-s0" / "model.json").read_text())
    assert card["config"]["epochs"] == 4
    table = (out / "table.md").read_text()
    assert first_out.split("\n\n")[1].strip() in table  # the first run's own table, untouched


def test_two_trainings_of_one_run_folder(tmp_path, capsys):
    """4. A second training of a run folder fails at once, naming the first one's pid."""
    run = tmp_path / "run"
    first = script(*TRAIN, "--epochs", "6", "--out", run)
    _wait_until_locked(run, first)
    code, err, _ = cli(capsys, *TRAIN, "--epochs", "6", "--seed", "1", "--out", run)
    one_line_error(code, err, "train", "in use by another process", f"pid {first.pid}")
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    card = json.loads((run / "model.json").read_text())
    assert card["config"]["seed"] == 0 and card["config"]["epochs"] == 6
    assert not (run / ".lock").exists()
