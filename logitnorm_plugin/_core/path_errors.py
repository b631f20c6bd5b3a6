"""Which operating-system errors are bad input, and their one-line message.

The rule: an ``OSError`` whose ``errno`` says that a path given to a command cannot be used as
given (too long, a file where a folder belongs or the reverse, a link loop, no permission, a
read-only or full file system) is the user's to fix, so the command line prints one line naming
the path and exits with status 2. Every other ``OSError`` (a missing file included: that one is
more often a bug than an input) keeps its traceback. Torch-free.
"""

from __future__ import annotations

import errno
import os

__all__ = ["PATH_ERRNOS", "path_error_message"]

#: errno -> what it means for the path it names
PATH_ERRNOS = {
    errno.ENAMETOOLONG: "the path is too long for the file system (at most 255 bytes a name)",
    errno.EISDIR: "it is a folder, where a file is needed",
    errno.ENOTDIR: "a part of it is a file, where a folder is needed",
    errno.EEXIST: "it exists as a file, where a folder is needed",
    errno.ELOOP: "too many levels of symbolic links (a link loop)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
}


def _shown(path, limit: int = 100) -> str:
    """``path`` as text, its middle cut out when it is longer than ``limit`` characters (an
    over-long path stays readable and the message one line)."""
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    text = " ".join(text.split())
    if len(text) <= limit:
        return repr(text)
    cut = f"{text[: limit // 2]}...{text[-(limit // 2 - 3):]}"
    return f"{cut!r} ({len(text)} characters)"


def path_error_message(exc: BaseException) -> str | None:
    """The one-line message of an ``OSError`` that is bad input (:data:`PATH_ERRNOS`), naming
    its path; ``None`` for any other exception.

    :param exc: the exception a command raised
    """
    if not isinstance(exc, OSError) or exc.errno not in PATH_ERRNOS:
        return None
    # of a rename (a temporary onto the target) the target, the path that was given
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    where = "a path" if path is None else _shown(path)
    reason = PATH_ERRNOS[exc.errno]
    if exc.errno == errno.EEXIST and path is not None and os.path.isdir(path):
        reason = "it exists already"  # not a file where a folder belongs
    return f"cannot use {where}: {reason} ({exc.strerror or exc})"
