"""SQLite access for the result store whose errors are one line naming the file.

Every ``sqlite3`` error of :class:`Connection` (also while iterating a cursor) becomes a
:class:`~logitnorm_plugin._core.errors.UserError`: a full disk (``database or disk is full``) a
:class:`~logitnorm_plugin._core.errors.StorageError`, a lock held past the timeout a
:class:`~logitnorm_plugin._core.errors.FolderBusyError`, a damaged file
(``database disk image is malformed``, ``file is not a database``) an
:class:`~logitnorm_plugin._core.errors.IncompatibleResultsError` that says how to start over.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from logitnorm_plugin._core.errors import (
    FolderBusyError,
    IncompatibleResultsError,
    StorageError,
    one_line,
)

__all__ = ["Connection", "Cursor", "store_error"]


def store_error(exc: sqlite3.Error, path: Path) -> Exception:
    """The one-line error of a failed SQLite operation on the store ``path``."""
    text = str(exc)
    lowered = text.lower()
    if "disk is full" in lowered or getattr(exc, "sqlite_errorcode", None) == 13:
        return StorageError(
            f"no space left to write the result store {str(path)!r} ({text}): free space on its "
            "device and run the same command again; the cells finished so far are kept"
        )
    if "locked" in lowered or "busy" in lowered:
        return FolderBusyError(
            f"the result store {str(path)!r} stayed locked by another process ({text}); wait "
            "for it to finish and run the command again"
        )
    if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        return StorageError(
            f"cannot write the result store {str(path)!r} ({text}): choose an --out folder you "
            "can write to"
        )
    return IncompatibleResultsError(
        f"the result store {str(path)!r} is damaged ({one_line(text, 120)}): start a new one "
        "with `logitnorm-ood bench --force` on the same --out (the damaged file is kept "
        "beside it), or restore a copy"
    )


class Cursor:
    """A cursor whose SQLite errors (also while iterating) become :func:`store_error`."""

    def __init__(self, cursor, connection: Connection):
        self._cursor, self._connection = cursor, connection

    def __iter__(self):
        with self._connection.errors():
            yield from self._cursor

    def fetchone(self):
        with self._connection.errors():
            return self._cursor.fetchone()

    def fetchall(self):
        with self._connection.errors():
            return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self):
        return self._cursor.lastrowid


class Connection:
    """An ``sqlite3`` connection to a result store whose errors name the file."""

    def __init__(self, path: Path, timeout: float = 30):
        self.path = path
        try:
            self._connection = sqlite3.connect(str(path), timeout=timeout)
        except sqlite3.Error as exc:
            raise store_error(exc, path) from exc

    @contextlib.contextmanager
    def errors(self):
        try:
            yield
        except sqlite3.Error as exc:
            raise store_error(exc, self.path) from exc

    def execute(self, sql: str, args=()) -> Cursor:
        with self.errors():
            return Cursor(self._connection.execute(sql, args), self)

    def executescript(self, sql: str) -> None:
        with self.errors():
            self._connection.executescript(sql)

    def commit(self) -> None:
        with self.errors():
            self._connection.commit()

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Connection:
        self._connection.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        with self.errors():
            return self._connection.__exit__(*exc)
