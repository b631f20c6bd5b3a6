"""Open only regular files, never through a link.

The rule: a file this package opens inside a folder that somebody else may have made (a run
folder, a results folder and its ``results.sqlite``, a ``.lock``, ``bench_request.json``, a
dataset folder) is opened only when the last component of its path **is** a regular file:

- never a symbolic link, whether it points to a file, to nothing (a dangling link: nothing is
  created at its target) or to a folder; a link is how a shared folder makes a command write
  into ``~/.bashrc`` or read somebody's key;
- never a FIFO, a socket, a device or a folder; opening a FIFO blocks until a writer comes,
  which may be never.

How: ``os.open`` with ``O_NOFOLLOW`` (the kernel refuses a link at the last component, with
``ELOOP``) and ``O_NONBLOCK`` (a FIFO cannot block the open), then ``fstat`` of the descriptor
must say ``S_ISREG`` (what was opened, not what the name pointed to a moment earlier);
``O_NONBLOCK`` is cleared again on a regular file. Where the platform has no ``O_NOFOLLOW``
(Windows), the name is checked with ``lstat`` before and the descriptor's identity compared
after. Folders above the last component are followed: an ``--out`` that is a link to a
larger disk is the user's own choice.

Why by hand: ``open()`` and :mod:`pathlib` follow links and block on a FIFO; ``sqlite3``
follows links and offers no ``SQLITE_OPEN_NOFOLLOW`` from Python; :class:`filelock.FileLock`
(4.x) opens its lock file with ``O_NOFOLLOW`` but reports a link only as the raw ``Too many
levels of symbolic links`` and does not look at what it opened. This module turns each of
those into one line that names the path, says what it is instead, and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, Union

from logitnorm_plugin._core.errors import StorageError

__all__ = [
    "NotRegularFileError",
    "check_descriptor",
    "check_name",
    "kind_of",
    "open_regular",
    "read_bytes",
    "read_json",
    "read_text",
]

PathLike = Union[str, os.PathLike]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)

# what ``open`` with O_NOFOLLOW / O_NONBLOCK says for a name that is not a regular file
_NOT_REGULAR_ERRNOS = {errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR,
                       getattr(errno, "EFTYPE", errno.ELOOP)}


class NotRegularFileError(StorageError):
    """A path that should be a regular file is a symbolic link, a FIFO, a socket, a device or
    a folder; nothing was read from or written to it (nor through it)."""


def kind_of(path: PathLike) -> str | None:
    """What ``path`` is if it is not a regular file (``"a symbolic link to '...'"``, ``"a
    FIFO (named pipe)"``, ...); ``None`` for a regular file or a missing name. Does not follow
    a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path)
        except OSError:
            return "a symbolic link"
        dangling = "" if os.path.exists(path) else ", which does not exist"
        return f"a symbolic link (to {target!r}{dangling})"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _error(path: PathLike, what: str, kind: str | None, advice: str) -> NotRegularFileError:
    kind = kind or "not a regular file"
    return NotRegularFileError(
        f"the {what} {str(path)!r} is {kind}, not a regular file: this package never opens a "
        f"file through a link or a special file; {advice}"
    )


def _advice(path: PathLike, advice: str | None) -> str:
    return advice or "remove it (it is not ours) or choose another folder"


def check_name(path: PathLike, what: str = "file", advice: str | None = None) -> None:
    """Refuse ``path`` unless it is missing or a regular file (``lstat``: a link is not
    followed); for files opened by others' code by name (SQLite, filelock).

    :raises NotRegularFileError: one line naming the path, what it is and what to do
    """
    kind = kind_of(path)
    if kind is not None:
        raise _error(path, what, kind, _advice(path, advice))


def check_descriptor(fd: int, path: PathLike, what: str = "file",
                     advice: str | None = None) -> None:
    """Refuse the open descriptor ``fd`` of ``path`` unless it is a regular file.

    :raises NotRegularFileError: as :func:`check_name`
    """
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        kind = kind_of(path) or ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                                 "a folder" if stat.S_ISDIR(mode) else None)
        raise _error(path, what, kind, _advice(path, advice))


def open_regular(path: PathLike, flags: int = os.O_RDONLY, mode: int = 0o666,
                 what: str = "file", advice: str | None = None) -> int:
    """``os.open`` that opens only a regular file, never through a link, never blocking on a
    FIFO (see the module's rule); ``flags`` as for ``os.open`` (``O_CREAT`` creates a regular
    file, never one at a link's target).

    :return: the descriptor (blocking mode, close-on-exec)
    :raises NotRegularFileError: the name is a link, a FIFO, a device, a socket or a folder
    :raises OSError: any other failure (a missing file, no permission), as ``os.open``
    """
    if not _NOFOLLOW:
        check_name(path, what, advice)
        before = os.lstat(path) if os.path.lexists(path) else None
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC | _BINARY, mode)
    except OSError as exc:
        if exc.errno in _NOT_REGULAR_ERRNOS:
            raise _error(path, what, kind_of(path), _advice(path, advice)) from exc
        raise
    try:
        check_descriptor(fd, path, what, advice)
        if not _NOFOLLOW and before is not None:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
                raise _error(path, what, "replaced while being opened", _advice(path, advice))
        if _NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: PathLike, what: str = "file", advice: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`)."""
    fd = open_regular(path, os.O_RDONLY, what=what, advice=advice)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_text(path: PathLike, what: str = "file", advice: str | None = None) -> str:
    """The UTF-8 text of the regular file ``path`` (see :func:`open_regular`).

    :raises UnicodeDecodeError: it is not UTF-8 (a ``ValueError``)
    """
    return read_bytes(path, what, advice).decode("utf-8")


def read_json(path: PathLike, what: str = "file", advice: str | None = None) -> Any:
    """The JSON document in the regular file ``path`` (see :func:`open_regular`).

    :raises ValueError: not UTF-8 or not JSON (``json.JSONDecodeError``)
    """
    return json.loads(read_text(Path(path), what, advice))
