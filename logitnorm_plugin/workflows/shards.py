"""Shard stores: each evaluation job writes its own SQLite file; the driver merges them.

Jobs on many nodes never write one SQLite file over a shared filesystem (SQLite's locks are
not reliable there). An evaluation job writes a complete :class:`~logitnorm_plugin.store.results.
ResultStore` of its own under a temporary name and renames it to
``<out>/workflow/shards/<model>.sqlite`` when it is complete, so a shard that exists is whole.
The driver (``bench`` or ``gather``), which holds the results folder's lock, merges each shard
into ``results.sqlite`` in one transaction: cells are keyed by the full configuration (model
identity, benchmark + protocol configuration, detector configuration, dataset) and a cell the
store already has is kept, not replaced. The shard's provenance record becomes a row of the
store's ``runs`` table (once: merging the same shard again adds nothing), and the merged shard
is removed.

Hand-written on the standard library's ``sqlite3`` (``ATTACH``): the store is SQLite and the
copy is four ``INSERT ... SELECT`` statements; no library does this merge for us.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from logitnorm_plugin._core.atomic import TEMPORARY_NAME
from logitnorm_plugin._core.errors import IncompatibleResultsError
from logitnorm_plugin.store import seals
from logitnorm_plugin.store.database import Connection, check_files
from logitnorm_plugin.store.results import SCHEMA_VERSION, STORE_FILE, ResultStore

__all__ = ["MergeResult", "WORKFLOW_DIR", "merge_shards", "shard_dir", "shard_path"]

#: the folder under a bench's --out that holds its shards, job status files and logs
WORKFLOW_DIR = "workflow"

_CELL_COLUMNS = ("model_id, config_id, detector_id, dataset, model, loss, seed, detector, "
                 "detector_group, run_id, created_utc, row")


@dataclass
class MergeResult:
    """What a merge did: cells added to the store, cells it already had, shards merged."""

    added: int = 0
    already: int = 0
    shards: int = 0


def shard_dir(out) -> Path:
    return Path(out) / WORKFLOW_DIR / "shards"


def shard_path(out, slug: str) -> Path:
    """Where the evaluation job ``slug`` of the bench in ``out`` leaves its shard."""
    return shard_dir(out) / f"{slug}.sqlite"


def finished_shards(out) -> list[Path]:
    """The complete shards waiting in ``out`` (temporary files of running jobs excluded)."""
    folder = shard_dir(out)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.sqlite") if not TEMPORARY_NAME.match(p.name))


def merge_shards(out, shards=None, remove_temporaries: bool = False,
                 replace: bool = False) -> MergeResult:
    """Merge finished shards (default: all in ``out``) into ``out/results.sqlite``.

    :param replace: a shard's cell replaces the store's (``bench --force``: the jobs
        recomputed the cells the store had); default: the store's cell is kept
    :param remove_temporaries: also remove the temporary files that killed jobs left (only
        when no job of this results folder can still be running)
    :raises IncompatibleResultsError: a shard of another schema version, or not a store
    """
    result = MergeResult()
    shards = finished_shards(out) if shards is None else [Path(s) for s in shards]
    store_path = Path(out) / STORE_FILE
    with ResultStore(store_path):  # creates the store, or checks its schema version
        pass
    db = Connection(store_path)
    try:
        for shard in shards:
            _check_shard(shard)
            db.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            try:
                with db:
                    added, already = _merge_one(db, "REPLACE" if replace else "IGNORE", shard)
            finally:
                db.execute("DETACH DATABASE shard")
            result.added += added
            result.already += already
            result.shards += 1
            shard.unlink()
    finally:
        db.close()
    if remove_temporaries:
        for leftover in shard_dir(out).glob(".*.tmp*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
    return result


def _merge_one(db: Connection, conflict: str, shard: Path) -> tuple[int, int]:
    runs = {}
    for run_id, created, record, ok in db.execute(
            "SELECT run_id, created_utc, provenance, "
            f"seal IS {seals.record_seal_sql('runs')} FROM shard.runs").fetchall():
        seals.check_record(ok, shard, "runs", (run_id,))
        found = db.execute("SELECT run_id FROM main.runs WHERE provenance = ?",
                           (record,)).fetchone()
        if found is None:  # a new id here: sealed again, as stored here
            found = (db.execute("INSERT INTO main.runs (created_utc, provenance) VALUES (?, ?)",
                                (created, record)).lastrowid,)
            db.execute(f"UPDATE main.runs SET seal = {seals.record_seal_sql('runs')} "
                       "WHERE run_id = ?", found)
        runs[run_id] = found[0]
    # configurations and scores keep their keys: checked, then copied with their seals
    for table in ("configs", "scores"):
        for *values, ok in db.execute(
                f"SELECT {', '.join(seals.RECORD_COLUMNS[table])}, "
                f"seal IS {seals.record_seal_sql(table)} FROM shard.{table}"):
            seals.check_record(ok, shard, table, tuple(values))
    db.execute("INSERT OR IGNORE INTO main.configs (config_id, config, seal) "
               "SELECT config_id, config, seal FROM shard.configs")
    before = db.execute("SELECT COUNT(*) FROM main.cells").fetchone()[0]
    offered = 0
    for *values, ok in db.execute(
            f"SELECT {_CELL_COLUMNS}, seal IS {seals.SEAL_SQL} FROM shard.cells ORDER BY rowid"
    ).fetchall():
        seals.check_seal(ok, shard, values[4], values[7], values[3])  # as the job stored it
        values[9] = runs.get(values[9])
        added_now = db.execute(f"INSERT OR {conflict} INTO main.cells ({_CELL_COLUMNS}) "
                               f"VALUES ({', '.join('?' * len(values))})", values).rowcount
        if added_now:  # its run has a new id here: sealed again, as stored here
            db.execute(f"UPDATE main.cells SET seal = {seals.SEAL_SQL} WHERE model_id = ? AND "
                       "config_id = ? AND detector_id = ? AND dataset = ?", values[:4])
        offered += 1
    db.execute(f"INSERT OR {conflict} INTO main.scores (model_id, config_id, detector_id, "
               "dataset, n, data, seal) SELECT model_id, config_id, detector_id, dataset, n, "
               "data, seal FROM shard.scores")
    added = db.execute("SELECT COUNT(*) FROM main.cells").fetchone()[0] - before
    return added, offered - added


def _check_shard(path: Path) -> None:
    check_files(path)  # a link or a special file in the shard folder is not a shard of ours
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.Error as exc:
        raise IncompatibleResultsError(f"{path} is not a result store shard ({exc}); remove "
                                       "it and run the same command again") from exc
    if row is None or str(row[0]) != str(SCHEMA_VERSION):
        raise IncompatibleResultsError(
            f"{path} is a shard of store schema {row[0] if row else None}, this version "
            f"writes {SCHEMA_VERSION}: remove it and run the same command again")
