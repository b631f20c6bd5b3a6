"""Folder locks: one writing command per run folder and per results folder.

``logitnorm-ood train`` holds the lock of its run folder while it runs, ``logitnorm-ood bench``
and ``logitnorm-ood tune-t`` the lock of their ``--out`` folder (which holds the result store
and the run folders they train). A second command on the same folder:

- **train fails at once** (:class:`~logitnorm_plugin._core.errors.FolderBusyError`, naming the
  holder's pid and command): two trainings of one run folder are never what was meant, and
  the first one's configuration owns the folder anyway;
- **bench and tune-t wait** (saying so once on stderr, naming the holder) until the first
  one ends, then run against what it left: the same request reuses its models and cells,
  another configuration of a run folder is refused. No waiting run ever reports another
  run's numbers. ``--lock-timeout SECONDS`` (``lock_timeout=`` in Python) bounds the wait;
  0 fails at once.

The lock is ``<folder>/.lock``, held with ``fcntl.flock``. The kernel releases it when its
process ends in any way (SIGKILL included), so a lock never outlives its holder and there is
no stale lock to break. The file holds the holder's pid, host, command and start time, for the
message a second process prints; it is removed on release (a killed holder leaves the file,
which the next holder simply locks again). Locks are advisory, on local file systems (on
network file systems ``flock`` is as good as the server's lock support).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Union

from logitnorm_plugin._core.errors import FolderBusyError, StorageError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_FILE", "busy", "check_free", "hold", "make_folder"]

#: the lock file inside a locked folder
LOCK_FILE = ".lock"

PathLike = Union[str, os.PathLike]

# seconds a "fail at once" acquisition retries before it fails
_GRACE = 0.3

# folders this process holds (a second acquisition here would wait for itself)
_HELD: set = set()


def make_folder(folder: PathLike, what: str = "folder") -> bool:
    """Create ``folder`` (and its parents) if missing; ``True`` if it was created.

    :raises StorageError: one line naming the folder, for a file in its place, no permission
        or another reason it cannot be created
    """
    folder = Path(folder)
    if folder.is_dir():
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise StorageError(
            f"the {what} {str(folder)!r} cannot be created: {str(exc.filename or folder)!r} is "
            "a file, not a folder; choose another path"
        ) from exc
    except PermissionError as exc:
        raise StorageError(
            f"cannot create the {what} {str(folder)!r}: permission denied on "
            f"{str(exc.filename or folder)!r}; choose a folder you can write to"
        ) from exc
    except OSError as exc:
        raise StorageError(
            f"cannot create the {what} {str(folder)!r}: {exc.strerror or exc}; choose another "
            "folder"
        ) from exc
    return True


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        text = f"pid {info['pid']} on {info['host']}"
        if info.get("command"):
            text += f", `{info['command']}`"
        return text + f", since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _record() -> bytes:
    argv = sys.argv or [""]
    command = " ".join([os.path.basename(argv[0]), *argv[1:]]).strip()
    return json.dumps({
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command[:300],
        "since": _dt.datetime.now().isoformat(timespec="seconds"),
    }).encode("utf-8")


def _try_lock(fd: int, block: bool) -> bool:
    if fcntl is None:  # pragma: no cover - Windows: msvcrt locks one byte, never blocks
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _same_file(fd: int, path: Path) -> bool:
    """The locked descriptor is still the file at ``path`` (a releasing holder unlinks it)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev)


def _open(path: Path, what: str, folder: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError as exc:
        raise StorageError(
            f"cannot write to the {what} {str(folder)!r}: permission denied; choose a folder "
            "you can write to"
        ) from exc
    except OSError as exc:
        raise StorageError(
            f"cannot write to the {what} {str(folder)!r}: {exc.strerror or exc}"
        ) from exc


def busy(folder: PathLike) -> str | None:
    """Who holds the lock of ``folder`` (pid, host, command, since), or ``None`` when nobody
    does. Creates nothing; for a quick answer before :func:`hold` (which decides)."""
    path = Path(folder) / LOCK_FILE
    if fcntl is None or os.path.realpath(folder) in _HELD:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


#: what to do when a folder is busy, unless the caller says otherwise
_ADVICE = "wait for it to finish, or choose another --out folder"


def _busy_error(folder: Path, what: str, holder: str, advice: str, waited: str = ""
                ) -> FolderBusyError:
    return FolderBusyError(
        f"the {what} {str(folder)!r} is in use by another process ({holder}){waited}; {advice}"
    )


def check_free(folder: PathLike, what: str = "folder", advice: str = _ADVICE) -> None:
    """Raise the error that ``hold(folder, timeout=0)`` would raise if another process holds
    the lock of ``folder`` now; creates nothing (a quick answer before checks that read the
    folder, which a holder may be writing).

    :raises FolderBusyError: naming the holder
    """
    holder = busy(folder)
    if holder is not None:
        raise _busy_error(Path(folder), what, holder, advice)


def _stderr(message: str) -> None:
    print(f"logitnorm-ood: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def hold(
    folder: PathLike,
    timeout: float | None = 0,
    what: str = "folder",
    advice: str = _ADVICE,
    say: Callable[[str], None] | None = _stderr,
) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block.

    A folder that this call created and that is empty when the block ends (e.g. the command
    failed before writing anything) is removed again.

    :param folder: the folder to lock
    :param timeout: ``0``: fail at once if another process holds it; ``None``: wait as long as
        it takes; a number: wait up to that many seconds
    :param what: what the folder is, for messages (``"run folder"``, ``"results folder"``)
    :param advice: what to do when it is busy, for the error message
    :param say: called once with a line when this call starts waiting (``None``: silent)
    :raises FolderBusyError: another process holds it (after ``timeout`` seconds)
    :raises StorageError: the folder or its lock file cannot be created
    """
    folder = Path(folder)
    created = make_folder(folder, what)
    path = folder / LOCK_FILE
    key = os.path.realpath(folder)
    if key in _HELD:
        raise FolderBusyError(f"the {what} {str(folder)!r} is already in use by this process")
    # "at once" still rides out another process's momentary look (:func:`busy`)
    grace = _GRACE if timeout is not None and float(timeout) < _GRACE else None
    deadline = None if timeout is None else time.monotonic() + max(_GRACE, float(timeout))
    announced = False
    fd = -1
    try:
        while True:
            # the previous holder removes a folder it created and left empty: make it again
            created = make_folder(folder, what) or created
            try:
                fd = _open(path, what, folder)
            except StorageError:
                if not folder.is_dir():
                    continue  # removed between the two calls
                raise
            got = _try_lock(fd, block=False)
            if not got:
                holder = _holder_text(path)
                if deadline is not None and time.monotonic() >= deadline:
                    waited = "" if grace else f" after waiting {float(timeout):g} s"
                    raise _busy_error(folder, what, holder, advice, waited)
                if not announced and say is not None and grace is None:
                    say(f"waiting for the {what} {str(folder)!r}: in use by {holder}")
                    announced = True
                if deadline is None and fcntl is not None:
                    got = _try_lock(fd, block=True)
                else:
                    while not got and time.monotonic() < deadline:
                        time.sleep(0.1)
                        got = _try_lock(fd, block=False)
                if not got:
                    os.close(fd)
                    fd = -1
                    continue  # the deadline check above raises
            if fcntl is None or _same_file(fd, path):
                break
            os.close(fd)  # the previous holder removed the file it held: lock the new one
            fd = -1
        os.ftruncate(fd, 0)
        os.write(fd, _record())
        _HELD.add(key)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    try:
        yield folder
    finally:
        _HELD.discard(key)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)  # still ours: remove it before the lock goes
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty: a command that wrote nothing leaves nothing
