"""Results in SQLite: one row per (model, detector, dataset) cell, resumable, aggregatable.

A cell is keyed by the model's stable identity (a pytorch-ood registry key with its weights'
hash, or the SHA-256 of the weights), the benchmark + protocol configuration (a hash of it, see
:func:`logitnorm_plugin.evaluate.config_id`) and the detector (its registry name plus the
arguments that change its scores). Each cell is committed as soon as it is computed, so a run
that is killed keeps every finished cell, and the next run computes only the missing ones.

Every call of :func:`~logitnorm_plugin.evaluate.evaluate` with a store records its provenance
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

from logitnorm_plugin.errors import IncompatibleResultsError

__all__ = ["SCHEMA_VERSION", "ResultStore", "aggregate", "AGGREGATE_METRICS"]

SCHEMA_VERSION = 1

#: metrics averaged by :func:`aggregate` ("FPR95-ID95", "AUPR-ID-AP" and "FPR95-OpenOOD" are
#: :data:`logitnorm_plugin.metrics.PAPER_FPR_KEY`, ``PAPER_AUPR_KEY`` and ``OPENOOD_FPR_KEY``,
#: spelled out to keep this module torch-free)
AGGREGATE_METRICS = (
    "AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "FPR95-ID95", "AUTC", "AUPR-ID-AP",
    "FPR95-OpenOOD",
)

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


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


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
    ``groups``, e.g. near/far), then mean and sample standard deviation (ddof=1; 0 for a single
    model) are taken over the models. ``ACC`` and ``ECE`` are per model and aggregated the same
    way.

    :param rows: result rows (from :func:`~logitnorm_plugin.evaluate.evaluate` or the store)
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
                    # rows stored before a metric existed lack it
                    in_group = [r[metric] for r in model_rows
                                if r.get("Dataset") in names and r.get(metric) is not None]
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
            mean, std = _mean_std(values)
            entry[name], entry[f"{name}_std"] = mean, std
        out.append(entry)
    return out
