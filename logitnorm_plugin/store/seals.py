"""Sealed cells: every stored cell carries a digest of its content, checked on every read.

The rule ("seal what we store"): the ``seal`` column of a cell is the SHA-256
(:func:`~logitnorm_plugin._core.digests.json_sha256`, canonical JSON) of the cell's stored
columns (:data:`SEALED_COLUMNS`: its key, its labels, its run, its time and the metrics row,
exactly as SQLite returns them). It is computed by SQLite itself through the SQL function
``lnp_seal`` that :func:`install` registers on each connection, when a cell is written and
when it is read, so what is checked is what is stored, byte for byte.

- **A cell whose seal does not match** (a digit of an AUROC edited with ``sqlite3``, a row
  copied from another store, a seal removed) is an error, never a silently returned number:
  :class:`TamperedCellError`, one line naming the cell (model, detector, dataset) and the
  file. It is not skipped and recomputed on its own, because the numbers around it came from
  the same file: ``logitnorm-ood bench --force`` (``ResultStore(path,
  replace_incompatible=True)``) moves the whole store aside as
  ``results.sqlite.tampered.bak`` and computes every cell again.
- **A cell whose row is not a JSON object of numbers** (bad JSON, a metric that is a string
  or a list) is :class:`DamagedCellError`, also one line naming the cell.
- **Stores written before cells were sealed** (schema 2 without the ``seal`` column) are
  sealed when they are first opened by this version, in one ``BEGIN IMMEDIATE`` transaction
  (so two processes never seal twice, and a reader sees all or nothing), after every row has
  been checked to be well formed; the meta record ``cells_sealed`` says it happened. An edit
  made before that first opening cannot be found (there was nothing to compare with); every
  later one is.

The same rule seals the other tables (:data:`RECORD_COLUMNS`): each benchmark configuration
(``configs``), each run's provenance (``runs``) and each stored score vector (``scores``)
carries a ``seal`` over its columns, computed by SQLite through ``lnp_seal_record`` (the
table's name is part of what is sealed, so a row cannot pass as one of another table; a blob
is sealed by its SHA-256, hashed once per read of it), checked by every read that uses the
row. A changed one is :class:`TamperedRecordError`, one line naming the table and the row's
key (configuration id, run id, or model, detector and dataset); stores written before these
seals are sealed on first open after their rows are checked (meta record
``records_sealed``), in the same transaction as the cells.

A seal finds accidents (a bad copy, an edit by hand, a disk error) and casual edits; it does
not stop anybody who can rewrite the file and also recompute the seal, as this module's code
shows how. What a store from somebody else cannot do is make this package execute anything:
it only ever holds numbers and text.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from logitnorm_plugin._core.conventions import AGGREGATE_METRICS
from logitnorm_plugin._core.digests import json_sha256
from logitnorm_plugin._core.errors import IncompatibleResultsError

__all__ = [
    "DamagedCellError",
    "RECORD_COLUMNS",
    "SEALED_COLUMNS",
    "SEAL_SQL",
    "TamperedCellError",
    "TamperedRecordError",
    "check_record",
    "check_scores",
    "check_seal",
    "install",
    "parse_record",
    "parse_row",
    "record_key",
    "record_seal_of",
    "record_seal_sql",
    "seal_of",
]

#: the columns of ``cells`` that the seal covers, in this order
SEALED_COLUMNS = (
    "model_id", "config_id", "detector_id", "dataset", "model", "loss", "seed", "detector",
    "detector_group", "run_id", "created_utc", "row",
)

#: the SQL expression of a cell's seal (valid on connections where :func:`install` ran)
SEAL_SQL = f"lnp_seal({', '.join(SEALED_COLUMNS)})"

#: the other sealed tables: the columns each row's seal covers, in this order (its key first)
RECORD_COLUMNS = {
    "configs": ("config_id", "config"),
    "runs": ("run_id", "created_utc", "provenance"),
    "scores": ("model_id", "config_id", "detector_id", "dataset", "n", "data"),
}

#: how many of :data:`RECORD_COLUMNS` of each table are its key (named in errors)
_KEY_WIDTH = {"configs": 1, "runs": 1, "scores": 4}

_SEAL_VERSION = 1

#: row fields that hold numbers (or None, or "nan"/"inf"/"-inf" as the store writes them)
_NUMBER_FIELDS = (*AGGREGATE_METRICS, "ACC", "ECE")
_NOT_FINITE = ("nan", "inf", "-inf")


class TamperedCellError(IncompatibleResultsError):
    """A stored cell whose content no longer matches its seal."""


class DamagedCellError(IncompatibleResultsError):
    """A stored cell whose row is not a JSON object of the expected types."""


class TamperedRecordError(IncompatibleResultsError):
    """A stored configuration, provenance record or score vector that no longer matches its
    seal."""


def seal_of(*values: Any) -> str:
    """The seal of a cell's :data:`SEALED_COLUMNS` values (as SQLite returns them)."""
    plain = [["blob", v.hex()] if isinstance(v, (bytes, bytearray, memoryview)) else v
             for v in values]
    return json_sha256([_SEAL_VERSION, *plain])


def record_seal_of(table: str, *values: Any) -> str:
    """The seal of a row of ``table`` (:data:`RECORD_COLUMNS`, as SQLite returns them); a
    blob enters by its SHA-256, so a score vector is read and hashed once."""
    plain = [["sha256", hashlib.sha256(v).hexdigest()]
             if isinstance(v, (bytes, bytearray, memoryview)) else v for v in values]
    return json_sha256([_SEAL_VERSION, table, *plain])


def record_seal_sql(table: str) -> str:
    """The SQL expression of the seal of a row of ``table`` (one of :data:`RECORD_COLUMNS`)."""
    return f"lnp_seal_record('{table}', {', '.join(RECORD_COLUMNS[table])})"


def install(connection) -> None:
    """Register ``lnp_seal`` (:func:`seal_of`) and ``lnp_seal_record``
    (:func:`record_seal_of`) on an ``sqlite3`` connection."""
    connection.create_function("lnp_seal", len(SEALED_COLUMNS), seal_of, deterministic=True)
    connection.create_function("lnp_seal_record", -1, record_seal_of, deterministic=True)


def record_key(table: str, key: tuple) -> str:
    """The words naming a row of ``table`` by its key (the first columns of
    :data:`RECORD_COLUMNS`)."""
    if table == "configs":
        return f"the configuration {key[0]!r}"
    if table == "runs":
        return f"the provenance of run {key[0]}"
    model_id, config_id, detector_id, dataset = key
    try:  # a detector's key is the JSON of its configuration: its name says which
        detector = json.loads(detector_id)["name"]
    except (TypeError, ValueError, KeyError):
        detector = detector_id
    return (f"the scores of model {model_id!r}, detector {detector!r}, dataset "
            f"{dataset!r} (configuration {config_id!r})")


def _restore(path: Path, kept: bool = True) -> str:
    """What to do about a changed or damaged store (the end of each of these errors)."""
    text = ("restore the store from a copy, or run `logitnorm-ood bench --force` on the same "
            "--out to compute every cell again")
    return f"{text} (the changed file is kept beside it as {Path(path).name}.tampered.bak)" \
        if kept else text


def check_record(ok, path: Path, table: str, key: tuple) -> None:
    """Raise :class:`TamperedRecordError` unless ``ok`` (the query's
    ``seal IS lnp_seal_record(...)``).

    :param key: the row's key columns (:data:`RECORD_COLUMNS`)
    """
    if not ok:
        raise TamperedRecordError(
            f"the result store {str(path)!r} has a row of its {table} table that was changed "
            f"after it was written ({record_key(table, tuple(key)[:_KEY_WIDTH[table]])}: its "
            f"content does not match its seal); {_restore(path)}"
        )


def check_scores(n, data, path: Path, key: tuple) -> None:
    """Raise :class:`DamagedCellError` unless ``data`` holds ``n`` float32 values.

    :param key: the row's key columns (model id, configuration id, detector id, dataset)
    """
    if isinstance(data, bytes) and isinstance(n, int) and not isinstance(n, bool) \
            and len(data) == 4 * n:
        return
    size = f"{len(data)} bytes" if isinstance(data, bytes) else type(data).__name__
    raise DamagedCellError(
        f"the result store {str(path)!r} has a damaged record ({record_key('scores', key)} "
        f"should hold {n!r} float32 values, it holds {size}); {_restore(path, kept=False)}"
    )


def _cell(model, detector, dataset) -> str:
    return f"model {model!r}, detector {detector!r}, dataset {dataset!r}"


def check_seal(ok, path: Path, model, detector, dataset) -> None:
    """Raise :class:`TamperedCellError` unless ``ok`` (the query's ``seal IS lnp_seal(...)``).
    """
    if not ok:
        raise TamperedCellError(
            f"the result store {str(path)!r} has a cell that was changed after it was written "
            f"({_cell(model, detector, dataset)}: its content does not match its seal); "
            f"{_restore(path)}"
        )


def _bad_number(value: Any) -> bool:
    if value is None or value in _NOT_FINITE:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return False


def parse_row(text: Any, path: Path, model, detector, dataset) -> dict:
    """The metrics row of a cell as stored (JSON text), checked: a JSON object whose metric
    fields are numbers (or ``None`` or the texts ``nan``/``inf``/``-inf`` the store writes for
    values JSON has no words for).

    :raises DamagedCellError: one line naming the cell and what is wrong with it
    """
    why = None
    try:
        row = json.loads(text) if isinstance(text, (str, bytes)) else None
    except ValueError as exc:
        row, why = None, f"its row is not JSON ({exc})"
    if why is None and not isinstance(row, dict):
        why = f"its row is {type(row).__name__}, not a JSON object"
    if why is None:
        bad = [k for k in _NUMBER_FIELDS if k in row and _bad_number(row[k])]
        if bad:
            why = f"its {bad[0]} is {row[bad[0]]!r}, not a number"
        elif not isinstance(row.get("Dataset", ""), str):
            why = f"its Dataset is {row['Dataset']!r}, not a name"
    if why is not None:
        raise DamagedCellError(
            f"the result store {str(path)!r} has a damaged cell ({_cell(model, detector, dataset)}"
            f": {why}); restore the store from a copy, or run `logitnorm-ood bench --force` on "
            "the same --out to compute every cell again"
        )
    return row


def parse_record(text: Any, path: Path, what: str) -> dict:
    """A JSON object stored beside the cells (a benchmark configuration, a run's provenance),
    checked like a cell's row.

    :param what: which record, for the message (``"the configuration 'cfg0'"``)
    :raises DamagedCellError: one line naming the record
    """
    try:
        record = json.loads(text) if isinstance(text, (str, bytes)) else None
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise DamagedCellError(
            f"the result store {str(path)!r} has a damaged record ({what} is not a JSON "
            "object); restore the store from a copy, or run `logitnorm-ood bench --force` on "
            "the same --out to compute every cell again"
        )
    return record
