"""Folder locks: one writing command per run folder and per results folder.

``logitnorm-ood train`` holds the lock of its run folder while it runs, ``logitnorm-ood bench``
and ``logitnorm-ood tune-t`` the lock of their ``--out`` folder (which holds the result store
and the run folders they train). A second command on the same folder:

- **train fails at once** (:class:`~logitnorm_plugin._core.errors.FolderBusyError`, naming the
  holder's pid and command): two trainings of one run folder are never what was meant, and
  the first one's configuration owns the folder anyway;
- **bench and tune-t wait** (saying so once, naming the holder) until the first one ends, then
  run against what it left: the same request reuses its models and cells, another
  configuration of a run folder is refused. No waiting run ever reports another run's
  numbers. ``--lock-timeout SECONDS`` (``lock_timeout=`` in Python) bounds the wait; 0 fails
  at once.

The lock itself is :class:`filelock.FileLock` on ``<folder>/.lock`` (``flock`` on POSIX: the
kernel releases it when its holder ends in any way, SIGKILL included, so there is no stale lock
to break; filelock also re-tries when it locked an inode a releasing holder had just unlinked).
What this module adds, and filelock does not do: the holder's record (pid, host, command,
start time) written into the lock file on acquisition, for the one-line message a second
process prints; the distinction between failing at once and waiting with one announcement;
refusing re-entry from the same process; refusing a ``.lock`` that is a symbolic link, a FIFO,
a device or a folder in one line naming it (the rule of
:mod:`~logitnorm_plugin._core.regular_files`: the lock record is written only into a regular
file, never through a link); and leaving the folder as it was found (a folder
this call created and left empty is removed, with the lock file). Locks are advisory, on local
file systems (on network file systems ``flock`` is as good as the server's lock support).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Union

from filelock import FileLock, Timeout

from logitnorm_plugin._core import regular_files
from logitnorm_plugin._core.errors import FolderBusyError, StorageError

__all__ = ["LOCK_FILE", "busy", "check_free", "hold", "make_folder"]

#: the lock file inside a locked folder
LOCK_FILE = ".lock"

PathLike = Union[str, os.PathLike]

# seconds a "fail at once" acquisition retries before it fails
_GRACE = 0.3

_log = logging.getLogger(__name__)

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
        info = regular_files.read_json(path, "lock file")
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


def _lock_advice(path: Path) -> str:
    return ("remove it (it is not ours; the next command makes a new lock file) or choose "
            "another --out folder")


def _lock(path: Path) -> FileLock:
    def write_record(fd: int) -> None:
        """filelock's ``on_acquired``: the holder's record, for the message of a second
        process; only into a regular file (filelock opened it without following a link, but
        does not look at what it opened: a FIFO or device put there a moment before)."""
        regular_files.check_descriptor(fd, path, "lock file", _lock_advice(path))
        os.ftruncate(fd, 0)
        os.write(fd, _record())

    # thread_local=False: the hold belongs to the process (the ``with`` may cross threads)
    return FileLock(path, thread_local=False, on_acquired=write_record)


def busy(folder: PathLike) -> str | None:
    """Who holds the lock of ``folder`` (pid, host, command, since), or ``None`` when nobody
    does. Creates no folder; for a quick answer before :func:`hold` (which decides)."""
    path = Path(folder) / LOCK_FILE
    if os.path.realpath(folder) in _HELD or not path.is_file() or regular_files.kind_of(path):
        return None  # a link or a special file: hold() refuses it with the reason
    probe = FileLock(path, thread_local=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return _holder_text(path)
    except OSError:
        return None  # cannot even open it: nobody we could wait for either
    probe.release()
    return None


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


def _announce(message: str) -> None:
    _log.warning(message)


@contextlib.contextmanager
def hold(
    folder: PathLike,
    timeout: float | None = 0,
    what: str = "folder",
    advice: str = _ADVICE,
    say: Callable[[str], None] | None = _announce,
) -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block.

    A folder that this call created and that is empty when the block ends (e.g. the command
    failed before writing anything) is removed again.

    :param folder: the folder to lock
    :param timeout: ``0``: fail at once if another process holds it; ``None``: wait as long as
        it takes; a number: wait up to that many seconds
    :param what: what the folder is, for messages (``"run folder"``, ``"results folder"``)
    :param advice: what to do when it is busy, for the error message
    :param say: called once with a line when this call starts waiting (default: a warning on
        the ``logitnorm_plugin`` logger; ``None``: silent)
    :raises FolderBusyError: another process holds it (after ``timeout`` seconds)
    :raises StorageError: the folder or its lock file cannot be created
    """
    folder = Path(folder)
    created = make_folder(folder, what)
    path = folder / LOCK_FILE
    key = os.path.realpath(folder)
    if key in _HELD:
        raise FolderBusyError(f"the {what} {str(folder)!r} is already in use by this process")
    lock = _lock(path)
    try:
        regular_files.check_name(path, "lock file", _lock_advice(path))
        created = _acquire(lock, folder, timeout, what, advice, say) or created
        _HELD.add(key)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    try:
        yield folder
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):
            os.unlink(path)  # still ours: a waiter on this inode sees it unlinked and re-tries
        if created:
            # only if empty: a command that wrote nothing leaves nothing. Before the release: a
            # waiter polls by opening the lock file again, and once the lock is free it could
            # create one here first; then the folder would stay and belong to nobody
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        lock.release()


def _acquire(lock: FileLock, folder: Path, timeout, what: str, advice: str, say) -> bool:
    """Acquire ``lock``; ``True`` if the folder had to be made again while waiting."""
    path = Path(lock.lock_file)
    deadline = None if timeout is None else time.monotonic() + max(_GRACE, float(timeout))
    announced = remade = False
    try:
        while True:
            try:
                # the first try, even "at once", rides out another process's momentary look
                # (:func:`busy`); then wait as long as the caller allows
                first = _GRACE if not announced else None
                left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
                lock.acquire(timeout=first if first is not None else left)
                return remade
            except FileNotFoundError:
                # the previous holder removed the folder it created and left empty: make it
                # again and go on waiting
                remade = make_folder(folder, what) or remade
            except Timeout:
                holder = _holder_text(path)
                if deadline is not None and time.monotonic() >= deadline:
                    waited = "" if float(timeout) <= _GRACE else (
                        f" after waiting {float(timeout):g} s")
                    raise _busy_error(folder, what, holder, advice, waited) from None
                if not announced and say is not None:
                    say(f"waiting for the {what} {str(folder)!r}: in use by {holder}")
                announced = True
    except (FolderBusyError, regular_files.NotRegularFileError):
        raise
    except PermissionError as exc:
        raise StorageError(
            f"cannot write to the {what} {str(folder)!r}: permission denied; choose a folder "
            "you can write to"
        ) from exc
    except OSError as exc:
        # made a link or a special file since hold() looked: say so, not the raw errno
        regular_files.check_name(path, "lock file", _lock_advice(path))
        raise StorageError(
            f"cannot write to the {what} {str(folder)!r}: {exc.strerror or exc}"
        ) from exc
