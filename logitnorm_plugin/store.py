"""Results in SQLite: one row per (model, detector, dataset) cell, resumable, aggregatable.

A cell is keyed by the model's stable identity (a pytorch-ood registry key with its weights'
hash, or the SHA-256 of the weights), the benchmark + protocol configuration (its
:func:`~logitnorm_plugin.conventions.config_hash`) and the detector (its registry name plus the
arguments that change its scores). Each cell is committed as soon as it is computed, so a run
that is killed keeps every finished cell, and the next run computes only the missing ones.

Every call of :func:`~logitnorm_plugin.evaluate` with a store records its provenance
(:func:`logitnorm_plugin.provenance.collect`: versions, git commit, device, time) once in the
``runs`` table; each cell refers to the run that computed it.

Tables: ``meta`` (schema version), ``runs``, ``configs`` (benchmark + protocol, OOD groups),
``cells`` (the metrics of each cell as JSON) and ``scores`` (per-sample scores, only where asked
for, e.g. for histograms).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from logitnorm_plugin.conventions import AGGREGATE_METRICS
from logitnorm_plugin.errors import IncompatibleResultsError
from logitnorm_plugin.tables import mean_std

__all__ = [
    "AGGREGATE_METRICS",
    "SCHEMA_VERSION",
    "STORE_FILE",
    "ResultStore",
    "aggregate",
    "open_results",
]

SCHEMA_VERSION = 1

#: the result store inside a results folder (written by ``logitnorm-ood bench``)
STORE_FILE = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_utc TEXT NOT NULL,
    provenance TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS configs (
    config_id TEXT PRIMARY KEY,
    config TEXT NOT NULL
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
    run_id INTEGER REFERENCES runs(run_id),
    created_utc TEXT NOT NULL,
    row TEXT NOT NULL,
    PRIMARY KEY (model_id, config_id, detector_id, dataset)
);
CREATE TABLE IF NOT EXISTS scores (
    model_id TEXT NOT NULL,
    config_id TEXT NOT NULL,
    detector_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (model_id, config_id, detector_id, dataset)
);
"""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _json_value(value):
    # NaN / inf are not JSON; keep them as strings that float() reads back
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def _from_json_value(value):
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value


class ResultStore:
    """A SQLite file of evaluation cells.

    :param path: the database file (created with its folder if missing)
    :raises IncompatibleResultsError: if the file is not a result store of this schema version
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30)
        try:
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                with self._db:
                    self._db.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
            elif int(row[0]) != SCHEMA_VERSION:
                raise IncompatibleResultsError(
                    f"{self.path} is a result store of schema version {row[0]}; this version "
                    f"reads {SCHEMA_VERSION}. Use another --out folder or --force a new file."
                )
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise IncompatibleResultsError(
                f"{self.path} is not a results database ({exc})"
            ) from exc

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
        return int(cursor.lastrowid)

    def register_config(self, config_id: str, config: Mapping[str, Any]) -> None:
        """Remember what a configuration id stands for (first registration wins)."""
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO configs VALUES (?, ?)",
                (config_id, json.dumps(config, sort_keys=True, default=repr)),
            )

    def put(
        self,
        row: Mapping[str, Any],
        *,
        model_id: str,
        config_id: str,
        detector_id: str,
        run_id: int | None = None,
    ) -> None:
        """Store (or replace) one cell and commit it."""
        data = {k: _json_value(v) for k, v in row.items()}
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model_id, config_id, detector_id, str(row["Dataset"]), row.get("Model"),
                    row.get("Loss"), row.get("Seed"), row.get("Detector"), run_id, _now(),
                    json.dumps(data, sort_keys=False),
                ),
            )

    def put_scores(self, model_id: str, config_id: str, detector_id: str, dataset: str, scores):
        """Store per-sample scores (float32) of one (model, detector, dataset)."""
        import torch

        values = torch.as_tensor(scores).detach().to("cpu", torch.float32).contiguous()
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)",
                (
                    model_id, config_id, detector_id, dataset, values.numel(),
                    values.numpy().tobytes(),
                ),
            )

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
            "SELECT detector_id, dataset, row FROM cells WHERE model_id = ? AND config_id = ?",
            (model_id, config_id),
        )
        return {(d, s): self._row(text) for d, s, text in cursor}

    @staticmethod
    def _row(text: str) -> dict:
        return {k: _from_json_value(v) for k, v in json.loads(text).items()}

    def rows(
        self,
        config_id: str | None = None,
        model_ids: Iterable[str] | None = None,
        with_ids: bool = False,
        detectors: Iterable[str] | None = None,
    ) -> list[dict]:
        """Stored rows, in insertion order; ``with_ids`` adds ``model_id``, ``config_id``,
        ``detector_id`` and ``run_id``.

        :param config_id: only this configuration
        :param model_ids: only these models
        :param with_ids: add the key columns to each row
        :param detectors: only these detectors (registry names, the rows' ``Detector``)
        """
        ids = list(model_ids) if model_ids is not None else None
        names = list(detectors) if detectors is not None else None
        where, args = self._where(config_id=config_id, model_id=ids, detector=names)
        cursor = self._db.execute(
            "SELECT model_id, config_id, detector_id, run_id, row FROM cells"
            f"{where} ORDER BY rowid",
            args,
        )
        out = []
        for model_id, cfg, det_id, run_id, text in cursor:
            row = self._row(text)
            if with_ids:
                row.update(model_id=model_id, config_id=cfg, detector_id=det_id, run_id=run_id)
            out.append(row)
        return out

    def count(self, config_id: str | None = None) -> int:
        where, args = self._where(config_id=config_id)
        return int(self._db.execute(f"SELECT COUNT(*) FROM cells{where}", args).fetchone()[0])

    def scores(self, model_id: str, config_id: str, detector_id: str, dataset: str):
        """Stored scores as a float32 tensor, or ``None``."""
        import torch

        found = self._db.execute(
            "SELECT data FROM scores WHERE model_id = ? AND config_id = ? AND detector_id = ? "
            "AND dataset = ?",
            (model_id, config_id, detector_id, dataset),
        ).fetchone()
        if found is None:
            return None
        return torch.frombuffer(bytearray(found[0]), dtype=torch.float32)

    def config(self, config_id: str) -> dict | None:
        found = self._db.execute(
            "SELECT config FROM configs WHERE config_id = ?", (config_id,)
        ).fetchone()
        return json.loads(found[0]) if found else None

    def provenance(self, run_id: int) -> dict | None:
        found = self._db.execute(
            "SELECT provenance FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return json.loads(found[0]) if found else None

    def runs(self) -> list[dict]:
        cursor = self._db.execute("SELECT run_id, created_utc, provenance FROM runs")
        return [
            {"run_id": r, "created_utc": c, "provenance": json.loads(p)} for r, c, p in cursor
        ]

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
        from logitnorm_plugin import provenance

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
    ) -> list[dict]:
        """:func:`aggregate` over the stored cells of one configuration, with its OOD groups
        (optionally only of some models and detectors)."""
        config = self.config(config_id) or {}
        rows = self.rows(config_id=config_id, model_ids=model_ids, with_ids=True,
                         detectors=detectors)
        return aggregate(
            rows, groups=config.get("groups") or {}, by=by, per_dataset=per_dataset
        )


def aggregate(
    rows: Iterable[Mapping[str, Any]],
    groups: Mapping[str, Sequence[str]] | None = None,
    by: Sequence[str] = ("Loss", "Detector"),
    metrics: Sequence[str] = AGGREGATE_METRICS,
    per_dataset: bool = False,
) -> list[dict]:
    """Mean +- std over models (seeds) of each model's mean over the OOD sets.

    Rows are grouped by the fields ``by``; within a group, each model (``model_id`` if present,
    else ``Model``) is first averaged over its OOD sets (all of them, and each group of
    ``groups``, e.g. near/far), then mean and sample standard deviation (ddof=1; NaN for a
    single model: undefined) are taken over the models. ``ACC`` and ``ECE`` are per model and
    aggregated the same way.

    :param rows: result rows (from :func:`~logitnorm_plugin.evaluate` or the store)
    :param groups: group name -> OOD set names
    :param by: fields that define a table row
    :param metrics: metrics to aggregate
    :param per_dataset: aggregate each OOD set separately (adds ``Dataset`` to ``by``)
    :return: one dict per group with the ``by`` fields, ``Seeds`` (number of models),
        ``Datasets`` (OOD sets per model), ``<metric>`` and ``<metric>_std``, ``ACC``/``ECE``
        (and ``_std``), and ``<group>/<metric>`` (and ``_std``) for each OOD group
    """
    by = tuple(by) + (("Dataset",) if per_dataset and "Dataset" not in by else ())
    groups = {g: set(names) for g, names in (groups or {}).items()}
    table: dict[tuple, dict[str, list[Mapping[str, Any]]]] = {}
    for row in rows:
        key = tuple(row.get(f) for f in by)
        model = row.get("model_id") or row.get("Model")
        table.setdefault(key, {}).setdefault(model, []).append(row)
    out = []
    for key, models in table.items():
        per_model: dict[str, list[float]] = {}
        n_sets = set()
        for model_rows in models.values():
            n_sets.add(len(model_rows))
            for metric in metrics:
                values = [r[metric] for r in model_rows if r.get(metric) is not None]
                per_model.setdefault(metric, []).append(
                    sum(values) / len(values) if values else None
                )
                for g, names in groups.items():
                    in_group = [r[metric] for r in model_rows if r.get("Dataset") in names]
                    if in_group:
                        per_model.setdefault(f"{g}/{metric}", []).append(
                            sum(in_group) / len(in_group)
                        )
            for metric in ("ACC", "ECE"):
                per_model.setdefault(metric, []).append(model_rows[0].get(metric))
        entry: dict[str, Any] = dict(zip(by, key))
        entry["Seeds"] = len(models)
        entry["Datasets"] = max(n_sets) if n_sets else 0
        for name, values in per_model.items():
            mean, std = mean_std(values)
            entry[name], entry[f"{name}_std"] = mean, std
        out.append(entry)
    return out


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


def _check_schema(path: Path) -> None:
    """Read-only check that ``path`` is a result store of the version this package reads,
    before :class:`ResultStore` opens it (which would add its tables to any SQLite file)."""
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
        if str(found[0]) != str(SCHEMA_VERSION):
            raise IncompatibleResultsError(
                f"{str(path)!r} is a result store of schema version {found[0]}, written by "
                f"another version of logitnorm-plugin; this version reads schema "
                f"{SCHEMA_VERSION}. Re-run `logitnorm-ood bench` with this version, or export "
                "with the version that wrote it"
            )
    finally:
        db.close()


def open_results(path) -> ResultStore:
    """Open the result store of a results folder (or the store file itself) for reading.

    :param path: a folder written by ``logitnorm-ood bench`` (holding ``results.sqlite``) or
        the ``.sqlite`` file
    :return: an open :class:`ResultStore` holding at least one cell
    :raises IncompatibleResultsError: if the folder is missing, is not a results folder, holds
        an empty store, or a store of another schema version
    """
    store_path = _store_path(path)
    _check_schema(store_path)
    store = ResultStore(store_path)
    if store.count() == 0:
        store.close()
        raise IncompatibleResultsError(
            f"{str(store_path)!r} holds no results (the store is empty); run "
            "`logitnorm-ood bench` to fill it"
        )
    return store
