"""Issue 22 point 1: a ``.lock`` (and any file we open in a folder made by others) is opened
only as a regular file, never through a link: a symbolic link to a victim file leaves the
victim byte-identical, a dangling link creates nothing at its target, a FIFO fails at once
instead of hanging, a folder is refused; each in one line naming the path."""

import os
import threading

import pytest

from logitnorm_plugin._core import locks, regular_files
from logitnorm_plugin._core.errors import StorageError
from logitnorm_plugin.cli import main

TRAIN = ["train", "--dataset", "digits", "--arch-arg", "width=8", "--device", "cpu", "--quiet",
         "--epochs", "1"]


def _hostile_lock(folder, kind, victim):
    folder.mkdir()
    lock = folder / locks.LOCK_FILE
    if kind == "link":
        os.symlink(victim, lock)
    elif kind == "dangling":
        os.symlink(victim.parent / "created_by_us", lock)
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    return lock


def _in_thread(call):
    """``call()`` in a thread: what it raised (or returned), ``None`` if it hangs 5 s."""
    outcome = {}

    def target():
        try:
            outcome["error"] = call()
        except BaseException as exc:  # noqa: BLE001 - the test looks at what it was
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=5)
    return outcome.get("error")


def _hold_in_thread(folder):
    def hold():
        with locks.hold(folder, timeout=0):
            return "acquired"

    return _in_thread(hold)


@pytest.mark.parametrize("kind", ["link", "dangling", "fifo", "folder"])
def test_a_hostile_lock_file_is_refused_in_one_line(tmp_path, kind):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    folder = tmp_path / "run"
    lock = _hostile_lock(folder, kind, victim)
    error = _hold_in_thread(folder)
    assert error is not None, "locks.hold hung on a hostile .lock"
    assert isinstance(error, StorageError), error
    text = str(error)
    assert "\n" not in text and str(lock) in text and "not a regular file" in text, text
    assert {"link": "symbolic link", "dangling": "does not exist", "fifo": "FIFO",
            "folder": "a folder"}[kind] in text
    assert "remove it" in text
    assert victim.read_bytes() == b"precious\n"
    assert not (tmp_path / "created_by_us").exists()
    assert os.path.lexists(lock)  # left as found: not ours to remove
    assert locks.busy(folder) is None


def test_train_on_a_folder_whose_lock_is_a_link(tmp_path, capsys):
    """Through the command line: exit 2, one line, the victim untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    run = tmp_path / "run"
    _hostile_lock(run, "link", victim)
    code = main([*TRAIN, "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("logitnorm-ood train: error")]
    assert len(lines) == 1 and "symbolic link" in lines[0] and ".lock" in lines[0], err
    assert victim.read_bytes() == b"precious\n"


@pytest.mark.parametrize("kind", ["link", "dangling", "fifo", "folder"])
def test_read_and_open_refuse_what_is_not_a_regular_file(tmp_path, kind):
    victim = tmp_path / "victim.json"
    victim.write_text('{"secret": 1}')
    name = _hostile_lock(tmp_path / "f", kind, victim)
    with pytest.raises(regular_files.NotRegularFileError, match="not a regular file"):
        regular_files.read_json(name, "request file")
    with pytest.raises(regular_files.NotRegularFileError):
        os.close(regular_files.open_regular(name, os.O_RDWR | os.O_CREAT, what="store"))
    assert victim.read_text() == '{"secret": 1}'
    assert not (tmp_path / "created_by_us").exists()


def test_regular_files_are_read_and_created(tmp_path):
    path = tmp_path / "a.json"
    fd = regular_files.open_regular(path, os.O_WRONLY | os.O_CREAT)
    os.write(fd, b'{"a": 1}')
    os.close(fd)
    assert regular_files.read_json(path) == {"a": 1}
    assert regular_files.kind_of(path) is None and regular_files.kind_of(tmp_path / "x") is None


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_run_folder_file_that_is_a_link_or_a_fifo_is_refused(tmp_path, kind):
    """A shared run folder whose config.json / metrics.jsonl points at a file of the reader
    (or is a FIFO that would block ``open`` forever): refused in one line, within seconds."""
    from logitnorm_plugin.training import runs

    victim = tmp_path / "victim.json"
    victim.write_text('{"secret": 1}')
    run = tmp_path / "run"
    run.mkdir()
    for name in (runs.CONFIG_FILE, runs.METRICS_FILE):
        target = run / name
        os.symlink(victim, target) if kind == "link" else os.mkfifo(target)
    for read in (runs.read_config, runs.read_metrics):
        error = _in_thread(lambda read=read: read(run))
        assert isinstance(error, regular_files.NotRegularFileError), (read, error)
        assert "not a regular file" in str(error) and str(run) in str(error)
