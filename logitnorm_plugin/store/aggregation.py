"""Aggregation of result rows: mean +- std over models (seeds) of each model's mean over the
OOD sets, one entry per table row; detector configurations are never mixed (see
:func:`aggregate`).

The grouping is SQL: ``GROUP BY`` over the cells' JSON (sqlite3's ``json_extract``) in the
store itself (:func:`aggregate_cells`, which :meth:`ResultStore.aggregate
<logitnorm_plugin.store.results.ResultStore.aggregate>` calls on cells it has checked), and
over an in-memory table of the same shape for rows given in Python (:func:`aggregate`): one
implementation. Each model's means over its OOD sets are taken by a Python aggregate function
in the order the cells were stored (SQLite's own ``AVG`` would parse and add the numbers
differently in the last bit, and NaN is no SQL value); the mean and standard deviation over
models and the labels are Python.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from logitnorm_plugin._core.conventions import AGGREGATE_METRICS
from logitnorm_plugin._core.digests import config_hash
from logitnorm_plugin._core.model_groups import GROUP_FIELD, describe_groups, group_of
from logitnorm_plugin._core.tables import mean_std

__all__ = ["aggregate", "aggregate_cells", "distinct_labels", "group_label", "number_value",
           "stored_value"]

_NOT_FINITE = ("nan", "inf", "-inf")


def stored_value(value):
    """A row value as the store keeps it in JSON: NaN / inf (not JSON) as the strings that
    ``float()`` reads back (:func:`number_value`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def number_value(value):
    """A stored row value back: ``"nan"``, ``"inf"``, ``"-inf"`` as floats."""
    if value in _NOT_FINITE:
        return float(value)
    return value


def aggregate(
    rows: Iterable[Mapping[str, Any]],
    groups: Mapping[str, Sequence[str]] | None = None,
    by: Sequence[str] = ("Loss", "Detector"),
    metrics: Sequence[str] = AGGREGATE_METRICS,
    per_dataset: bool = False,
) -> list[dict]:
    """Mean +- std over models (seeds) of each model's mean over the OOD sets.

    Rows are grouped by their model configuration (everything but the seed:
    :func:`~logitnorm_plugin._core.model_groups.group_of`, the one rule) and the fields
    ``by``; within a group, each model (``model_id`` if present,
    else ``Model``) is first averaged over its OOD sets (all of them, and each group of
    ``groups``, e.g. near/far), then mean and sample standard deviation (ddof=1; NaN for a
    single model: undefined) are taken over the models. ``ACC`` and ``ECE`` are per model and
    aggregated the same way.

    :param rows: result rows (from :func:`~logitnorm_plugin.evaluate` or the store)
    :param groups: group name -> OOD set names
    :param by: fields that define a table row
    :param metrics: metrics to aggregate
    :param per_dataset: aggregate each OOD set separately (adds ``Dataset`` to ``by``)
    :return: one dict per group with the ``by`` fields, ``model_group`` (the configuration's
        key), ``Model`` (a label that tells the configurations apart, unless ``by`` has one),
        ``Seeds`` (number of models),
        ``Datasets`` (OOD sets per model), ``<metric>`` and ``<metric>_std``, ``ACC``/``ECE``
        (and ``_std``), and ``<group>/<metric>`` (and ``_std``) for each OOD group
    """
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE cells (model_id TEXT, detector_group TEXT, row TEXT NOT NULL)")
        db.executemany("INSERT INTO cells VALUES (?, ?, ?)", (
            (row.get("model_id"), row.get("detector_group"),
             json.dumps({k: stored_value(v) for k, v in row.items()}))
            for row in rows))
        return aggregate_cells(db, "", (), groups, by, metrics, per_dataset)
    finally:
        db.close()


def _path(field: str) -> str:
    return '$."' + field.replace('"', '\\"') + '"'


# the model of a row: ``model_id`` if present, else ``Model``
_MODEL = ("CASE WHEN model_id IS NOT NULL AND model_id != '' THEN model_id "
          "ELSE json_extract(row, '$.Model') END")
# its detector: the stored group, else the label (:func:`detector_group_of`)
_HAS_GROUP = "detector_group IS NOT NULL AND detector_group != ''"
_DETECTOR = (f"CASE WHEN {_HAS_GROUP} THEN 'group' ELSE 'label' END, "
             f"CASE WHEN {_HAS_GROUP} THEN detector_group ELSE json_extract(row, '$.Detector') "
             "END")


def _means(metrics: Sequence[str], groups: Mapping[str, set]):
    """The aggregate function of one model's cells: its mean of each metric over its OOD sets
    (and over each group's), ``ACC``/``ECE`` of its first cell; JSON text."""

    class Means:
        def __init__(self):
            self.cells = []

        def step(self, rowid, text):
            self.cells.append((rowid, text))

        def finalize(self):
            self.cells.sort(key=lambda cell: cell[0])  # as stored: the same sums, bit for bit
            rows = [{k: number_value(v) for k, v in json.loads(text).items()}
                    for _, text in self.cells]
            per: dict[str, Any] = {}
            for metric in metrics:
                values = [r[metric] for r in rows if r.get(metric) is not None]
                per[metric] = sum(values) / len(values) if values else None
                for g, names in groups.items():
                    # rows stored before a metric existed lack it
                    in_group = [r[metric] for r in rows
                                if r.get("Dataset") in names and r.get(metric) is not None]
                    if in_group:
                        per[f"{g}/{metric}"] = sum(in_group) / len(in_group)
            for metric in ("ACC", "ECE"):
                per[metric] = rows[0].get(metric)
            return json.dumps(per)

    return Means


def _group_of(model_group, model_id, model) -> str:
    return group_of({GROUP_FIELD: model_group, "model_id": model_id, "Model": model})


def aggregate_cells(db, where: str, args: Sequence, groups: Mapping[str, Sequence[str]] | None,
                    by: Sequence[str], metrics: Sequence[str] = AGGREGATE_METRICS,
                    per_dataset: bool = False) -> list[dict]:
    """:func:`aggregate` of the rows of the table ``cells`` (columns ``model_id``,
    ``detector_group`` and the row as JSON in ``row``) of the SQLite connection ``db`` that
    match ``where`` (``" WHERE ..."`` with its ``args``): ``GROUP BY`` the table row and the
    model in SQL, the rest as :func:`aggregate` says."""
    by = tuple(by) + (("Dataset",) if per_dataset and "Dataset" not in by else ())
    groups = {g: set(names) for g, names in (groups or {}).items()}
    db.create_function("lnp_group_of", 3, _group_of, deterministic=True)
    db.create_aggregate("lnp_means", 2, _means(metrics, groups))
    keys = ["lnp_group_of(json_extract(row, '$.model_group'), model_id, "
            "json_extract(row, '$.Model'))"]
    paths = []  # the JSON paths of the fields, parameters of the key columns in order
    for field in by:
        if field == "Detector":
            keys.append(_DETECTOR)
        else:
            keys.append("json_extract(row, ?)")
            paths.append(_path(field))
    width = len(keys) + ("Detector" in by)  # the detector takes two columns
    cursor = db.execute(
        f"SELECT {', '.join(keys)}, {_MODEL}, MIN(rowid), model_id, row, "
        "json_group_array(DISTINCT json_extract(row, '$.Model')), COUNT(*), "
        f"lnp_means(rowid, row) FROM cells{where} "
        f"GROUP BY {', '.join(str(i) for i in range(1, width + 2))} ORDER BY MIN(rowid)",
        (*paths, *args),
    )
    return _combine(cursor.fetchall(), width, by)


def _combine(records: list, width: int, by: Sequence[str]) -> list[dict]:
    """Mean and standard deviation over the models of each table row, with its labels;
    ``records``: one per (table row, model), in the order of their first cells."""
    table: dict[tuple, list[tuple[int, dict]]] = {}
    firsts, labels = [], {}
    for record in records:
        key, (_, _, model_id, text, names, n, means) = record[:width], record[width:]
        first = {**json.loads(text), "model_id": model_id}
        # describe_groups reads each model's configuration and every label it was stored with
        firsts += [first] + [{**first, "Model": m} for m in json.loads(names)
                             if m != first.get("Model")]
        key = _detector_key(key, by)
        if "Detector" in by:
            labels.setdefault(key[1 + by.index("Detector")], first.get("Detector"))
        table.setdefault(key, []).append((n, json.loads(means)))
    model_labels = describe_groups(firsts)
    labels = distinct_labels(labels)
    out = []
    for key, models in table.items():
        per_model: dict[str, list] = {}
        for _, means in models:
            for name, value in means.items():
                per_model.setdefault(name, []).append(value)
        entry: dict[str, Any] = {"Model": model_labels[key[0]], **dict(zip(by, key[1:]))}
        entry[GROUP_FIELD] = key[0]
        if "Detector" in entry:
            entry["Detector"] = labels[entry["Detector"]]
        entry["Seeds"] = len(models)
        entry["Datasets"] = max(n for n, _ in models) if models else 0
        for name, values in per_model.items():
            mean, std = mean_std(values)
            entry[name], entry[f"{name}_std"] = mean, std
        out.append(entry)
    return out


def _detector_key(columns: tuple, by: Sequence[str]) -> tuple:
    """The SQL key columns as :func:`aggregate`'s key: the detector's two as one pair."""
    if "Detector" not in by:
        return tuple(columns)
    i = 1 + by.index("Detector")
    return (*columns[:i], (columns[i], columns[i + 1]), *columns[i + 2:])


def group_label(group: str) -> str | None:
    try:
        return json.loads(group).get("label")
    except (ValueError, AttributeError):
        return None


def detector_group_of(row: Mapping[str, Any]):
    """What a row's detector is aggregated by: its stored group, else its label."""
    group = row.get("detector_group")
    return ("group", group) if group else ("label", row.get("Detector"))


def distinct_labels(labels: dict) -> dict:
    """Group -> label, where two groups sharing a label (two classes or distributions under
    one name) get it with their distribution (or class, or a short hash) appended."""
    shared: dict[str, list] = {}
    for group, label in labels.items():
        shared.setdefault(label, []).append(group)
    out = dict(labels)
    for label, members in shared.items():
        if len(members) < 2:
            continue
        parsed = {g: (json.loads(g[1]) if g[0] == "group" else {}) for g in members}
        for field in ("distribution", "class"):
            values = [str(parsed[g].get(field)) for g in members]
            if len(set(values)) == len(values):
                break
        else:
            field = None
        for g in members:
            tag = str(parsed[g].get(field)) if field else config_hash(g, 8)
            out[g] = f"{label} [{tag}]"
    return out
