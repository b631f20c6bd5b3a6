"""Folder locks between real processes: fail at once, wait (saying so), bounded waits, a killed
holder, re-entry in one process, and the folder left as it was found."""

import signal
import subprocess
import sys
import threading
import time

import pytest

from logitnorm_plugin._core import locks
from logitnorm_plugin._core.errors import FolderBusyError, StorageError

HOLDER = """
import sys
from logitnorm_plugin._core import locks
with locks.hold(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.read()  # until the test closes stdin (or kills us)
"""


def holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def release(proc):
    proc.stdin.close()
    proc.wait(timeout=60)
    proc.stdout.close()


def test_fail_at_once_wait_bounded_and_wait_until_free(tmp_path):
    folder = tmp_path / "out"
    proc = holder(folder)
    try:
        assert f"pid {proc.pid}" in locks.busy(folder)
        with pytest.raises(FolderBusyError, match=f"in use by another process \\(pid {proc.pid}"):
            with locks.hold(folder, timeout=0, what="run folder"):
                pass
        said = []
        start = time.monotonic()
        with pytest.raises(FolderBusyError, match="after waiting 0.5 s; wait for it"):
            with locks.hold(folder, timeout=0.5, say=said.append):
                pass
        assert time.monotonic() - start >= 0.5
        assert len(said) == 1 and said[0].startswith("waiting for the folder")

        said.clear()
        threading.Timer(0.5, release, (proc,)).start()
        with locks.hold(folder, timeout=None, say=said.append) as held:
            assert held == folder and locks.busy(folder) is None  # ours, not busy to us
            assert f'"pid": {__import__("os").getpid()}' in (folder / locks.LOCK_FILE).read_text()
        assert len(said) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # each holder removed the lock file, and the folder, which it (re)created and left empty
    assert not folder.exists()


def test_a_killed_holder_releases_the_lock(tmp_path):
    folder = tmp_path / "out"
    proc = holder(folder)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stdin.close()
    assert (folder / locks.LOCK_FILE).exists()  # left behind, but nobody holds it
    assert locks.busy(folder) is None
    with locks.hold(folder, timeout=0):
        pass


def test_folder_created_and_left_empty_is_removed_and_reentry_is_refused(tmp_path):
    folder = tmp_path / "new" / "run"
    with locks.hold(folder):
        with pytest.raises(FolderBusyError, match="already in use by this process"):
            with locks.hold(folder):
                pass
    assert not folder.exists()
    with locks.hold(folder):
        (folder / "result.txt").write_text("kept")
    assert sorted(p.name for p in folder.iterdir()) == ["result.txt"]


def test_a_file_in_place_of_the_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match="is a file, not a folder"):
        with locks.hold(tmp_path / "f" / "run"):
            pass
