"""Results in SQLite: one row per (model, detector, dataset) cell, resumable, aggregatable.

A cell is keyed by the model's stable identity (a pytorch-ood registry key with its weights'
hash, or the SHA-256 of the weights), the benchmark + protocol configuration (its
:func:`~logitnorm_plugin._core.digests.config_hash`) and the detector's full configuration
(:meth:`DetectorSpec.key <logitnorm_plugin.evaluation.specs.DetectorSpec.key>`: registry name,
class with
its module, supplying distribution and every constructor argument, including those filled in
from the model such as the training ``t``). Each cell is committed as soon as it is computed,
so a run that is killed keeps every finished cell, and the next run computes only the missing
ones.

Aggregation never mixes detector configurations: each cell also records its detector group
(:meth:`DetectorSpec.group <logitnorm_plugin.evaluation.specs.DetectorSpec.group>`: the
configuration
without the model's part, with its table label), :func:`aggregate` groups by it, and two
configurations of one name get distinct labels (``logitnorm`` and ``logitnorm(t=1)``; two
classes under one label also show their distribution). ``logitnorm-ood bench`` aggregates
exactly the configurations it asked for (``detector_ids=``).

Schema version 2 (this one) added the detector group and the full configuration key. A store
of another version is refused with a one-line error; ``ResultStore(path,
replace_incompatible=True)`` (``logitnorm-ood bench --force``) moves it aside as
``results.sqlite.schema-<v>.bak`` (a damaged one as ``results.sqlite.damaged.bak``) and
starts a new one. SQLite errors (a damaged page, a full disk, a lock held too long) become
one-line :class:`~logitnorm_plugin._core.errors.UserError` messages naming the file.

Every call of :func:`~logitnorm_plugin.evaluate` with a store records its provenance
(:func:`logitnorm_plugin._core.provenance.collect`: versions, git commit, device, time) once in the
``runs`` table; each cell refers to the run that computed it.

Tables: ``meta`` (schema version), ``runs``, ``configs`` (benchmark + protocol, OOD groups),
``cells`` (the metrics of each cell as JSON) and ``scores`` (per-sample scores, only where
asked for, e.g. for histograms); every row of ``runs``, ``configs``, ``cells`` and ``scores``
has its ``seal`` (:mod:`~logitnorm_plugin.store.seals`), checked on every read that uses it.
Only a regular file that is ours is opened, never another application's SQLite file
(:mod:`~logitnorm_plugin.store.database`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from logitnorm_plugin._core import provenance
from logitnorm_plugin._core.conventions import AGGREGATE_METRICS
from logitnorm_plugin._core.errors import IncompatibleResultsError
from logitnorm_plugin._core.locks import make_folder
from logitnorm_plugin.store import seals
from logitnorm_plugin.store.aggregation import (
    aggregate,
    aggregate_cells,
    detector_group_of,
    distinct_labels,
    group_label,
    number_value,
    stored_value,
)
from logitnorm_plugin.store.database import (
    Connection,
    ForeignStoreError,
    check_ours,
    check_schema,
    first_bad_cell,
    first_bad_record,
    mark_and_seal,
)

__all__ = [
    "AGGREGATE_METRICS",
    "SCHEMA_VERSION",
    "STORE_FILE",
    "ResultStore",
    "aggregate",
    "open_results",
]

SCHEMA_VERSION = 2

#: the result store inside a results folder (written by ``logitnorm-ood bench``)
STORE_FILE = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_utc TEXT NOT NULL,
    provenance TEXT NOT NULL,
    seal TEXT
);
CREATE TABLE IF NOT EXISTS configs (
    config_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    seal TEXT
);
CREATE TABLE IF NOT EXISTS cells (
    model_id TEXT NOT NULL,
    config_id TEXT NOT NULL,
    detector_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT,
    loss TEXT,
    seed INTEGER,
    detector TEXT,
    detector_group TEXT,
    run_id INTEGER REFERENCES runs(run_id),
    created_utc TEXT NOT NULL,
    row TEXT NOT NULL,
    seal TEXT,
    PRIMARY KEY (model_id, config_id, detector_id, dataset)
);
CREATE TABLE IF NOT EXISTS scores (
    model_id TEXT NOT NULL,
    config_id TEXT NOT NULL,
    detector_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    seal TEXT,
    PRIMARY KEY (model_id, config_id, detector_id, dataset)
);
"""


_log = logging.getLogger(__name__)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class ResultStore:
    """A SQLite file of evaluation cells.

    :param path: the database file (created with its folder if missing)
    :param replace_incompatible: a store of another schema version, or a damaged one, is moved
        aside (``<name>.schema-<v>.bak``, ``<name>.damaged.bak``) and a new one started,
        instead of raising
    :raises IncompatibleResultsError: if the file is not a result store of this schema version
        or is damaged
    """

    def __init__(self, path: str | Path, replace_incompatible: bool = False):
        self.path = Path(path)
        make_folder(self.path.parent, "results folder")
        self._db = Connection(self.path)
        try:
            check_ours(self._db, _SCHEMA)  # another application's database: never adopted
            version = self._version(check=replace_incompatible)
        except ForeignStoreError:
            self._db.close()
            raise
        except IncompatibleResultsError:
            if not replace_incompatible:
                self._db.close()
                raise
            version = self._move_aside("damaged")
        if version is not None and version != str(SCHEMA_VERSION):
            if not replace_incompatible:
                self._db.close()
                raise IncompatibleResultsError(
                    f"{self.path} is a result store of schema version {version}; this version "
                    f"reads {SCHEMA_VERSION}. Run the same command with --force "
                    f"(`logitnorm-ood bench --force`, `tune-t --force`) to start a new store "
                    f"(the old file is kept as {self.path.name}.schema-{version}.bak), or use "
                    "another --out folder"
                )
            self._move_aside(f"schema-{version}")
        try:
            self._db.executescript(_SCHEMA)
            mark_and_seal(self._db, SCHEMA_VERSION)
            problem = (first_bad_cell(self._db) or first_bad_record(self._db)
                       if replace_incompatible else None)
            if problem is not None:
                _log.warning("%s; starting a new store (--force)", problem)
                self._move_aside("tampered")
                self._db.executescript(_SCHEMA)
                mark_and_seal(self._db, SCHEMA_VERSION)
        except BaseException:
            self._db.close()
            raise

    def _version(self, check: bool) -> str | None:
        """The stored schema version (``None`` for a new file); with ``check``, a damaged
        file raises."""
        if check:
            found = self._db.execute("PRAGMA quick_check").fetchone()
            if not found or found[0] != "ok":
                raise IncompatibleResultsError(f"{self.path} is damaged ({found})")
        has_meta = self._db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if has_meta is None:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return None if row is None else str(row[0])

    def _move_aside(self, why: str) -> None:
        """Rename the file to ``<name>.<why>.bak`` (never over another) and open a new one."""
        self._db.close()
        target = self.path.with_name(f"{self.path.name}.{why}.bak")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.{why}.{n}.bak")
        os.replace(self.path, target)
        for suffix in ("-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{target}{suffix}")
        self._db = Connection(self.path)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # -- writing ------------------------------------------------------------------------------

    def start_run(self, provenance: Mapping[str, Any]) -> int:
        """Record a run's provenance; its id goes on every cell the run computes."""
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO runs (created_utc, provenance) VALUES (?, ?)",
                (_now(), json.dumps(provenance, sort_keys=True, default=repr)),
            )
            self._db.execute(f"UPDATE runs SET seal = {seals.record_seal_sql('runs')} "
                             "WHERE run_id = ?", (cursor.lastrowid,))
        return int(cursor.lastrowid)

    def register_config(self, config_id: str, config: Mapping[str, Any]) -> None:
        """Remember what a configuration id stands for (first registration wins)."""
        with self._db:
            added = self._db.execute(
                "INSERT OR IGNORE INTO configs (config_id, config) VALUES (?, ?)",
                (config_id, json.dumps(config, sort_keys=True, default=repr)),
            ).rowcount
            if added:  # never resealed: a changed configuration stays one
                self._db.execute(f"UPDATE configs SET seal = {seals.record_seal_sql('configs')}"
                                 " WHERE config_id = ?", (config_id,))

    def put(
        self,
        row: Mapping[str, Any],
        *,
        model_id: str,
        config_id: str,
        detector_id: str,
        run_id: int | None = None,
        detector_group: str | None = None,
    ) -> None:
        """Store (or replace) one cell and commit it.

        :param detector_group: the detector's group (JSON with its ``label``, see
            :meth:`DetectorSpec.group <logitnorm_plugin.evaluation.specs.DetectorSpec.group>`); the
            stored row's ``Detector`` becomes that label
        """
        data = {k: stored_value(v) for k, v in row.items()}
        if detector_group is not None:
            data["Detector"] = group_label(detector_group) or data.get("Detector")
        with self._db:
            cursor = self._db.execute(
                "INSERT OR REPLACE INTO cells (model_id, config_id, detector_id, dataset, model, "
                "loss, seed, detector, detector_group, run_id, created_utc, row) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model_id, config_id, detector_id, str(row["Dataset"]), row.get("Model"),
                    row.get("Loss"), row.get("Seed"), data.get("Detector"), detector_group,
                    run_id, _now(), json.dumps(data, sort_keys=False),
                ),
            )
            self._db.execute(f"UPDATE cells SET seal = {seals.SEAL_SQL} WHERE rowid = ?",
                             (cursor.lastrowid,))

    def add_row_fields(self, model_id: str, fields: Mapping[str, Any]) -> int:
        """Add ``fields`` to the stored rows of one model that lack them (rows stored before
        those fields existed, e.g. the model configuration of aggregation's one rule); fields
        a row has are kept. :return: the number of rows changed"""
        cursor = self._db.execute(
            f"SELECT rowid, model, detector, dataset, row, seal IS {seals.SEAL_SQL} FROM cells "
            "WHERE model_id = ?", (model_id,))
        changed = []
        for rowid, model, detector, dataset, text, ok in cursor.fetchall():
            seals.check_seal(ok, self.path, model, detector, dataset)
            row = seals.parse_row(text, self.path, model, detector, dataset)
            missing = {k: stored_value(v) for k, v in fields.items() if k not in row}
            if missing:
                changed.append((json.dumps({**row, **missing}, sort_keys=False), rowid))
        if changed:
            with self._db:
                for values in changed:
                    self._db.execute("UPDATE cells SET row = ? WHERE rowid = ?", values)
                    self._db.execute(
                        f"UPDATE cells SET seal = {seals.SEAL_SQL} WHERE rowid = ?", values[1:])
        return len(changed)

    def put_scores(self, model_id: str, config_id: str, detector_id: str, dataset: str, scores):
        """Store per-sample scores (float32) of one (model, detector, dataset)."""
        import torch

        values = torch.as_tensor(scores).detach().to("cpu", torch.float32).contiguous()
        data = values.numpy().tobytes()
        with self._db:
            cursor = self._db.execute(
                "INSERT OR REPLACE INTO scores (model_id, config_id, detector_id, dataset, n, "
                "data) VALUES (?, ?, ?, ?, ?, ?)",
                (model_id, config_id, detector_id, dataset, values.numel(), data),
            )
            self._db.execute(f"UPDATE scores SET seal = {seals.record_seal_sql('scores')} "
                             "WHERE rowid = ?", (cursor.lastrowid,))

    def delete(self, model_id: str | None = None, config_id: str | None = None) -> int:
        """Remove cells (and scores) of a model and/or configuration; returns cells removed."""
        where, args = self._where(model_id=model_id, config_id=config_id)
        with self._db:
            n = self._db.execute(f"DELETE FROM cells{where}", args).rowcount
            self._db.execute(f"DELETE FROM scores{where}", args)
        return n

    # -- reading ------------------------------------------------------------------------------

    @staticmethod
    def _where(**filters) -> tuple:
        parts, args = [], []
        for column, value in filters.items():
            if value is None:
                continue
            if isinstance(value, (list, tuple, set, frozenset)):
                value = list(value)
                parts.append(f"{column} IN ({', '.join('?' * len(value))})")
                args.extend(value)
            else:
                parts.append(f"{column} = ?")
                args.append(value)
        return (" WHERE " + " AND ".join(parts) if parts else ""), args

    def cells(self, model_id: str, config_id: str) -> dict:
        """The finished cells of a model under a configuration: ``(detector_id, dataset) ->
        row``."""
        cursor = self._db.execute(
            f"SELECT detector_id, dataset, model, detector, row, seal IS {seals.SEAL_SQL} "
            "FROM cells WHERE model_id = ? AND config_id = ?",
            (model_id, config_id),
        )
        return {(d, s): self._row(text, (model, detector, s, ok))
                for d, s, model, detector, text, ok in cursor}

    def _row(self, text: str, cell: tuple) -> dict:
        """A stored row, its seal checked (``cell``: model, detector, dataset and whether the
        seal matched) and its values back as numbers.

        :raises seals.TamperedCellError: the cell was changed after it was written
        :raises seals.DamagedCellError: its row is not a JSON object of numbers
        """
        model, detector, dataset, ok = cell
        seals.check_seal(ok, self.path, model, detector, dataset)
        row = seals.parse_row(text, self.path, model, detector, dataset)
        return {k: number_value(v) for k, v in row.items()}

    def rows(
        self,
        config_id: str | None = None,
        model_ids: Iterable[str] | None = None,
        with_ids: bool = False,
        detectors: Iterable[str] | None = None,
        detector_ids: Iterable[str] | None = None,
    ) -> list[dict]:
        """Stored rows, in insertion order; ``with_ids`` adds ``model_id``, ``config_id``,
        ``detector_id``, ``detector_group`` and ``run_id``.

        :param config_id: only this configuration
        :param model_ids: only these models
        :param with_ids: add the key columns to each row
        :param detectors: only these detector labels (the rows' ``Detector``)
        :param detector_ids: only these detector configurations (``detector_id``: exact)
        """
        ids = list(model_ids) if model_ids is not None else None
        names = list(detectors) if detectors is not None else None
        det_ids = list(detector_ids) if detector_ids is not None else None
        where, args = self._where(config_id=config_id, model_id=ids, detector=names,
                                  detector_id=det_ids)
        cursor = self._db.execute(
            "SELECT model_id, config_id, detector_id, detector_group, run_id, row, model, "
            f"detector, dataset, seal IS {seals.SEAL_SQL} FROM cells{where} ORDER BY rowid",
            args,
        )
        out, groups = [], []
        for model_id, cfg, det_id, group, run_id, text, *cell in cursor:
            row = self._row(text, cell)
            if with_ids:
                row.update(model_id=model_id, config_id=cfg, detector_id=det_id,
                           detector_group=group, run_id=run_id)
            out.append(row)
            groups.append(detector_group_of({"detector_group": group, **row}))
        # two detector groups under one label (e.g. two classes named alike) get distinct ones
        labels = distinct_labels({g: row.get("Detector") for g, row in zip(groups, out)})
        for group, row in zip(groups, out):
            row["Detector"] = labels[group]
        return out

    def count(self, config_id: str | None = None) -> int:
        where, args = self._where(config_id=config_id)
        return int(self._db.execute(f"SELECT COUNT(*) FROM cells{where}", args).fetchone()[0])

    def scores(self, model_id: str, config_id: str, detector_id: str, dataset: str):
        """Stored scores as a float32 tensor, or ``None``."""
        import torch

        key = (model_id, config_id, detector_id, dataset)
        found = self._db.execute(
            f"SELECT n, data, seal IS {seals.record_seal_sql('scores')} FROM scores "
            "WHERE model_id = ? AND config_id = ? AND detector_id = ? AND dataset = ?", key,
        ).fetchone()
        if found is None:
            return None
        n, data, ok = found
        seals.check_record(ok, self.path, "scores", key)
        seals.check_scores(n, data, self.path, key)
        return torch.frombuffer(bytearray(data), dtype=torch.float32)

    def _record(self, table: str, column: str, key) -> dict | None:
        """The JSON object ``column`` of the row of ``table`` (``configs`` or ``runs``) whose
        key is ``key``, its seal checked, or ``None``."""
        key_column = seals.RECORD_COLUMNS[table][0]
        found = self._db.execute(
            f"SELECT {column}, seal IS {seals.record_seal_sql(table)} FROM {table} "
            f"WHERE {key_column} = ?", (key,)).fetchone()
        if found is None:
            return None
        seals.check_record(found[1], self.path, table, (key,))
        return seals.parse_record(found[0], self.path, seals.record_key(table, (key,)))

    def config(self, config_id: str) -> dict | None:
        """The stored benchmark configuration of ``config_id`` (its seal checked), or
        ``None``."""
        return self._record("configs", "config", config_id)

    def provenance(self, run_id: int) -> dict | None:
        """The stored provenance of run ``run_id`` (its seal checked), or ``None``."""
        return self._record("runs", "provenance", run_id)

    def runs(self) -> list[dict]:
        """Every run of the store with its provenance (each seal checked)."""
        cursor = self._db.execute(
            f"SELECT run_id, created_utc, provenance, seal IS {seals.record_seal_sql('runs')} "
            "FROM runs")
        out = []
        for r, c, p, ok in cursor:
            seals.check_record(ok, self.path, "runs", (r,))
            out.append({"run_id": r, "created_utc": c, "provenance": seals.parse_record(
                p, self.path, seals.record_key("runs", (r,)))})
        return out

    def config_ids(self) -> list[str]:
        """The benchmark configurations of the store, in the order their first cell was
        stored."""
        cursor = self._db.execute("SELECT config_id FROM cells ORDER BY rowid")
        return list(dict.fromkeys(row[0] for row in cursor))

    def results_config(self, config_id: str, rows: Sequence[Mapping[str, Any]] | None = None
                       ) -> dict:
        """The stored configuration of ``config_id`` (benchmark, protocol, OOD names and
        groups), completed from its rows where an older store lacks a field."""
        if rows is None:
            rows = self.rows(config_id=config_id, with_ids=True)
        config = dict(self.config(config_id) or {})
        if not rows:
            return config
        config.setdefault("benchmark", rows[0].get("Benchmark"))
        config.setdefault("protocol", rows[0].get("Protocol"))
        if not config.get("ood_names"):
            config["ood_names"] = list(dict.fromkeys(r["Dataset"] for r in rows))
        config.setdefault("groups", {})
        return config

    def provenance_summary(self, rows: Sequence[Mapping[str, Any]] | None = None) -> dict:
        """Where the numbers of ``rows`` (default: all cells) came from, merged over the runs
        that computed them: package versions, git commits, devices, commands, seeds and dates;
        plus when and with which versions this summary was made."""

        rows = list(rows) if rows is not None else self.rows(with_ids=True)
        run_ids = sorted({r["run_id"] for r in rows if r.get("run_id") is not None})
        records = [self.provenance(i) or {} for i in run_ids]
        packages: dict[str, list] = {}
        for rec in records:
            for name, version in (rec.get("versions") or {}).items():
                values = packages.setdefault(name, [])
                if version is not None and version not in values:
                    values.append(version)
        dates = sorted(d for d in (rec.get("created_utc") for rec in records) if d)
        seeds = sorted({r["Seed"] for r in rows if r.get("Seed") is not None})
        exporter = provenance.collect()

        def distinct(values):
            return [v for v in dict.fromkeys(values) if v is not None]

        return {
            "versions": packages,
            "git_commits": distinct(rec.get("git_commit") for rec in records),
            "devices": distinct(rec.get("device") for rec in records),
            "commands": distinct((rec.get("config") or {}).get("command") for rec in records),
            "seeds": seeds,
            "computed_utc": [dates[0], dates[-1]] if dates else [],
            "runs": run_ids,
            "exported_utc": exporter["created_utc"],
            "exported_with": {
                "versions": exporter["versions"],
                "git_commit": exporter["git_commit"],
            },
        }

    def aggregate(
        self,
        config_id: str,
        model_ids: Iterable[str] | None = None,
        by: Sequence[str] = ("Loss", "Detector"),
        per_dataset: bool = False,
        detectors: Iterable[str] | None = None,
        detector_ids: Iterable[str] | None = None,
    ) -> list[dict]:
        """:func:`aggregate` over the stored cells of one configuration, with its OOD groups
        (optionally only of some models, detector labels or exact detector configurations):
        SQL ``GROUP BY`` in the store (:func:`~logitnorm_plugin.store.aggregation.aggregate_cells`)
        over cells whose seals have been checked first.

        :raises seals.TamperedCellError: a selected cell was changed after it was written
        :raises seals.DamagedCellError: a selected cell's row is not well formed
        """
        config = self.config(config_id) or {}
        where, args = self._where(
            config_id=config_id, model_id=list(model_ids) if model_ids is not None else None,
            detector=list(detectors) if detectors is not None else None,
            detector_id=list(detector_ids) if detector_ids is not None else None)
        problem = first_bad_cell(self._db, where, args)  # verified cells only
        if problem is not None:
            raise problem
        return aggregate_cells(self._db, where, args, config.get("groups") or {}, by,
                               per_dataset=per_dataset)


# -- opening a results folder for reading --------------------------------------------------------


def _store_path(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise IncompatibleResultsError(
            f"results folder {str(path)!r} does not exist; write one with "
            f"`logitnorm-ood bench --out {path}`"
        )
    if path.is_dir():
        store = path / STORE_FILE
        if not store.is_file():
            raise IncompatibleResultsError(
                f"{str(path)!r} holds no {STORE_FILE}: it is not a results folder of "
                f"`logitnorm-ood bench` (or the run was stopped before its first result)"
            )
        return store
    return path


def open_results(path) -> ResultStore:
    """Open the result store of a results folder (or the store file itself) for reading.

    :param path: a folder written by ``logitnorm-ood bench`` (holding ``results.sqlite``) or
        the ``.sqlite`` file
    :return: an open :class:`ResultStore` holding at least one cell
    :raises IncompatibleResultsError: if the folder is missing, is not a results folder, holds
        an empty store, or a store of another schema version
    """
    store_path = _store_path(path)
    check_schema(store_path, SCHEMA_VERSION)
    store = ResultStore(store_path)
    if store.count() == 0:
        store.close()
        raise IncompatibleResultsError(
            f"{str(store_path)!r} holds no results (the store is empty); run "
            "`logitnorm-ood bench` to fill it"
        )
    return store
