"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A kill at any moment leaves either the old file or the new one, never a torn file, because
``os.replace`` is atomic on POSIX and Windows when source and target share a filesystem.

The temporary file of ``<folder>/<name>`` is ``<folder>/.<name>.<8 random characters>.lnp<8
hex digits>.tmp`` (:data:`TEMPORARY_NAME`), where the hex digits are a mark only this module
writes: the start of the SHA-256 of ``<name>`` keyed with this package's tag
(:func:`temporary_mark`). A write that fails removes its file; a process that is killed
(SIGKILL, power loss) cannot, so commands that write into a folder call
:func:`remove_stale_temporaries` on it once they hold its lock
(:mod:`logitnorm_plugin._core.locks`). It removes only regular files (never a link) whose
name carries the right mark for the name it holds and that are older than the current
process: the leftovers of a crashed run of ours. A user's ``.notes.12345678.tmp``, another
tool's temporary file or a name with a wrong mark stays, even in an ``--out`` folder we
write. (The mark is not a secret; it tells our files from files of the same shape made by
accident, and somebody who can write into your folder could delete your files anyway.)

A write that fails for lack of space or permission raises
:class:`~logitnorm_plugin._core.errors.StorageError` naming the file (also when ``torch.save``
reports the failed write only as ``unexpected pos``), and the previous version of the file
stays as it was.
"""

import errno
import json
import os
import re
import secrets
import string
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, List, Union

from logitnorm_plugin._core.digests import bytes_sha256
from logitnorm_plugin._core.errors import StorageError, one_line

PathLike = Union[str, os.PathLike]

#: names of the temporary files of :func:`atomic_write` (the mark checked by
#: :func:`is_our_temporary`)
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.lnp(?P<mark>[0-9a-f]{8})\.tmp$")

_MARK_KEY = b"logitnorm-plugin temporary file\0"

#: when this process loaded the module: temporaries older than this are not its own
_STARTED = time.time()

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _storage_error(exc: BaseException, path: Path) -> BaseException:
    """The :class:`StorageError` for a failed write of ``path``, or ``exc`` itself."""
    again = ("free space on its device and run the command again (a training run continues "
             "with --resume from its last complete checkpoint); the previous version of the "
             "file is kept")
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
        return StorageError(f"no space left to write {str(path)!r}: {why}; {again}")
    if isinstance(exc, PermissionError):
        return StorageError(
            f"cannot write {str(path)!r}: permission denied; choose a folder you can write to"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return StorageError(f"cannot write {str(path)!r}: read-only file system")
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("unexpected pos" in text
                                          or "failed writing" in text.lower()):
        # torch's zip writer reports a short write (a full disk) only like this
        return StorageError(
            f"writing {str(path)!r} failed (torch: {one_line(text, 120)}), most likely because "
            f"the disk is full: {again}"
        )
    return exc


def temporary_mark(name: str) -> str:
    """The mark in the names of the temporary files of ``name`` (see the module's doc)."""
    return bytes_sha256(_MARK_KEY + name.encode("utf-8", "surrogateescape"))[:8]


def is_our_temporary(filename: str) -> bool:
    """Whether ``filename`` (a bare name) is the name of a temporary file of this module:
    :data:`TEMPORARY_NAME`'s form with the right mark for the name it holds."""
    found = TEMPORARY_NAME.match(filename)
    return bool(found) and found["mark"] == temporary_mark(found["name"])


def _suffix(path: Path) -> str:
    return f".lnp{temporary_mark(path.name)}.tmp"


def temporary_path(path: PathLike) -> Path:
    """A fresh name in :data:`TEMPORARY_NAME`'s form for a temporary file next to ``path``."""
    path = Path(path)
    alphabet = string.ascii_lowercase + string.digits + "_"
    while True:
        token = "".join(secrets.choice(alphabet) for _ in range(8))
        candidate = path.parent / f".{path.name}.{token}{_suffix(path)}"
        if not os.path.lexists(candidate):
            return candidate


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Remove the temporary files that interrupted writes of ours left in ``folder`` (not in
    its subfolders): regular files (not links) whose name carries our mark
    (:func:`is_our_temporary`) and that were last modified before this process started;
    nothing else. Call it only while holding the folder's lock, so that no other writer's
    file can be among them.

    :return: the removed paths
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not is_our_temporary(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_mtime >= _STARTED:
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def atomic_write(path: PathLike, write: Callable[[IO], None], binary: bool = True) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path`` and rename it into place.

    :param path: the final file
    :param write: writes the content into the open file object it is given
    :param binary: open the temporary file in binary (default) or text mode
    :return: the final path
    :raises StorageError: no space or no permission to write it (the old file is kept)
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_suffix(path),
                                   dir=path.parent)
    except OSError as exc:
        raise _storage_error(exc, path) from exc
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would have
        os.chmod(tmp, 0o666 & ~_umask())
        text_args = {} if binary else {"encoding": "utf-8"}
        with os.fdopen(fd, "wb" if binary else "w", **text_args) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        # the old file (if any) is untouched; only our temporary file goes
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        converted = _storage_error(exc, path)
        if converted is exc:
            raise
        raise converted from exc
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path: PathLike, obj: Any, **kwargs) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    kwargs.setdefault("indent", 2)
    kwargs.setdefault("sort_keys", False)
    return write_text(path, json.dumps(obj, **kwargs) + "\n")


def torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
