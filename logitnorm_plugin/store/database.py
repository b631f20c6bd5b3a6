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
import datetime as _dt
import sqlite3
from pathlib import Path

from logitnorm_plugin._core import regular_files
from logitnorm_plugin._core.errors import (
    FolderBusyError,
    IncompatibleResultsError,
    StorageError,
    one_line,
)
from logitnorm_plugin.store import seals

__all__ = ["APPLICATION_ID", "Connection", "Cursor", "ForeignStoreError", "check_files",
           "check_ours", "check_schema", "first_bad_cell", "first_bad_record", "mark_and_seal",
           "store_error"]

#: ``PRAGMA application_id`` of a result store: "LNRS" (logitnorm result store)
APPLICATION_ID = 0x4C4E5253

#: the files SQLite keeps beside a database
_COMPANIONS = ("", "-wal", "-journal", "-shm")


class ForeignStoreError(IncompatibleResultsError):
    """A SQLite file that is not a result store of this package (another application's)."""


def check_files(path: Path) -> None:
    """Refuse a store whose file or journal is a link or a special file (one line).

    :raises regular_files.NotRegularFileError: naming the file
    """
    for suffix in _COMPANIONS:
        regular_files.check_name(
            f"{path}{suffix}", "result store" if not suffix else f"result store's {suffix[1:]}",
            f"remove it (it is not ours) or choose another --out folder; {str(path)!r} is left "
            "as it was",
        )


def _columns(connection, table: str) -> set:
    return {r[1] for r in connection.execute(f"PRAGMA table_info({table!r})").fetchall()}


def check_ours(connection: Connection, schema: str) -> bool:
    """Refuse a SQLite file that is not one of our result stores (see the module's doc);
    ``True`` if it is ours but lacks the marks (an older or interrupted store: the caller
    adds them), ``False`` if it is marked or new (no tables at all).

    :param schema: the SQL of the current schema, to recognise an unmarked store by its tables
    :raises ForeignStoreError: one line naming the file; nothing was written to it
    """
    app = connection.execute("PRAGMA application_id").fetchone()[0]
    tables = {r[0] for r in connection.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()}
    if app == APPLICATION_ID:
        return False
    if app == 0 and not tables:
        return False
    reference = sqlite3.connect(":memory:")
    try:
        reference.executescript(schema)
        ours = {name: _columns(reference, name) for name in
                (r[0] for r in reference.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' "
                    "AND name NOT LIKE 'sqlite_%'").fetchall())}
    finally:
        reference.close()
    recorded = "meta" in tables and connection.execute(
        "SELECT 1 FROM meta WHERE key='schema_version'").fetchone() is not None
    if app == 0 and tables <= set(ours) and (recorded or all(
            _columns(connection, t) <= ours[t] for t in tables)):
        return True
    foreign = sorted(tables - set(ours))
    if app:
        why = f"its application id is {app:#x}, not ours ({APPLICATION_ID:#x})"
    elif foreign:
        why = f"it holds tables that are not ours: {', '.join(foreign[:5])}"
    else:
        why = "it has no schema record of ours and its tables have other columns"
    raise ForeignStoreError(
        f"{str(connection.path)!r} is a SQLite database of another application, not a result "
        f"store of logitnorm-plugin ({why}); it is left untouched: choose another --out "
        "folder (or move that file away)"
    )


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
        # row by row, not ``yield from``: a loop that stops early (an error raised on a row)
        # must not close the sqlite3 cursor through this generator after its connection
        while True:
            with self._connection.errors():
                row = self._cursor.fetchone()
            if row is None:
                return
            yield row

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
        check_files(path)
        try:
            self._connection = sqlite3.connect(str(path), timeout=timeout)
        except sqlite3.Error as exc:
            raise store_error(exc, path) from exc
        seals.install(self._connection)

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

    def create_function(self, *args, **kwargs) -> None:
        self._connection.create_function(*args, **kwargs)

    def create_aggregate(self, *args) -> None:
        self._connection.create_aggregate(*args)

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


def _needs_marks(connection: Connection) -> bool:
    columns = _columns(connection, "cells")
    meta = {r[0] for r in connection.execute("SELECT key FROM meta").fetchall()}
    app = connection.execute("PRAGMA application_id").fetchone()[0]
    return ("seal" not in columns or not {"schema_version", "cells_sealed", "records_sealed"}
            <= meta or app != APPLICATION_ID
            or any("seal" not in _columns(connection, t) for t in seals.RECORD_COLUMNS))


def _check_records(connection: Connection) -> None:
    """Raise the error of the first row of ``configs``, ``runs`` or ``scores`` that is not
    well formed (a configuration or provenance that is not a JSON object, scores whose size
    is not their count)."""
    for config_id, text in connection.execute("SELECT config_id, config FROM configs"):
        seals.parse_record(text, connection.path, seals.record_key("configs", (config_id,)))
    for run_id, text in connection.execute("SELECT run_id, provenance FROM runs"):
        seals.parse_record(text, connection.path, seals.record_key("runs", (run_id,)))
    for *key, n, data in connection.execute(
            "SELECT model_id, config_id, detector_id, dataset, n, data FROM scores"):
        seals.check_scores(n, data, connection.path, tuple(key))


def mark_and_seal(connection: Connection, schema_version: int) -> None:
    """Give a store (its tables made) its marks (schema record, application id) and seal the
    cells of a store written before cells were sealed (:mod:`~logitnorm_plugin.store.seals`),
    and its configurations, provenance records and scores if written before those were
    sealed, in one transaction, after checking that every row is well formed; writes nothing
    when everything is in place (a read-only store of this version opens).

    :raises seals.DamagedCellError: a row of an unsealed store is not well formed
    """
    if not _needs_marks(connection):
        return
    with connection:
        connection.execute("BEGIN IMMEDIATE")  # another process may be doing the same
        for table in ("cells", *seals.RECORD_COLUMNS):
            if "seal" not in _columns(connection, table):
                connection.execute(f"ALTER TABLE {table} ADD COLUMN seal TEXT")
        meta = {r[0] for r in connection.execute("SELECT key FROM meta").fetchall()}
        if "schema_version" not in meta:
            connection.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                               (str(schema_version),))
        if "cells_sealed" not in meta:
            cursor = connection.execute("SELECT model, detector, dataset, row FROM cells")
            for model, detector, dataset, text in cursor.fetchall():
                seals.parse_row(text, connection.path, model, detector, dataset)
            connection.execute(f"UPDATE cells SET seal = {seals.SEAL_SQL}")
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            connection.execute("INSERT INTO meta VALUES ('cells_sealed', ?)", (now,))
        if "records_sealed" not in meta:
            _check_records(connection)
            for table in seals.RECORD_COLUMNS:
                connection.execute(f"UPDATE {table} SET seal = {seals.record_seal_sql(table)}")
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            connection.execute("INSERT INTO meta VALUES ('records_sealed', ?)", (now,))
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def first_bad_cell(connection: Connection, where: str = "", args=()
                   ) -> IncompatibleResultsError | None:
    """The error of the first stored cell (of those ``where`` selects) that was changed or is
    damaged, if any."""
    try:
        cursor = connection.execute(
            f"SELECT model, detector, dataset, row, seal IS {seals.SEAL_SQL} FROM cells{where}",
            args)
        for model, detector, dataset, text, ok in cursor:
            seals.check_seal(ok, connection.path, model, detector, dataset)
            seals.parse_row(text, connection.path, model, detector, dataset)
    except IncompatibleResultsError as exc:
        return exc
    return None


def first_bad_record(connection: Connection) -> IncompatibleResultsError | None:
    """The error of the first stored configuration, provenance record or score vector that
    was changed or is damaged, if any (each blob is hashed once)."""
    try:
        for table, columns in seals.RECORD_COLUMNS.items():
            cursor = connection.execute(
                f"SELECT {', '.join(columns)}, seal IS {seals.record_seal_sql(table)} "
                f"FROM {table}")
            for *values, ok in cursor:
                seals.check_record(ok, connection.path, table, tuple(values))
        _check_records(connection)
    except IncompatibleResultsError as exc:
        return exc
    return None


def check_schema(path: Path, version: int) -> None:
    """Read-only check that ``path`` is a result store of the version this package reads,
    before :class:`~logitnorm_plugin.store.results.ResultStore` opens it for writing; a link or
    a special file is refused first (:func:`check_files`).

    :raises IncompatibleResultsError: one line naming the file
    """
    check_files(path)
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise IncompatibleResultsError(f"cannot open {str(path)!r}: {exc}") from exc
    try:
        try:
            found = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            if path.stat().st_size == 0:
                raise IncompatibleResultsError(
                    f"{str(path)!r} is empty: the bench run stored no results"
                ) from exc
            raise IncompatibleResultsError(
                f"{str(path)!r} is not a result store of logitnorm-plugin ({exc})"
            ) from exc
        if found is None:
            raise IncompatibleResultsError(
                f"{str(path)!r} has no schema version: not a result store of logitnorm-plugin"
            )
        if str(found[0]) != str(version):
            raise IncompatibleResultsError(
                f"{str(path)!r} is a result store of schema version {found[0]}, written by "
                f"another version of logitnorm-plugin; this version reads schema "
                f"{version}. Re-run the `logitnorm-ood bench` command with --force and "
                "this version (the old file is kept beside it), or read it with the version "
                "that wrote it"
            )
    finally:
        db.close()
