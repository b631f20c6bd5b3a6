"""Aggregation of result rows: mean +- std over models (seeds) of each model's mean over the
OOD sets, one entry per table row; detector configurations are never mixed (see
:func:`aggregate`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from logitnorm_plugin._core.conventions import AGGREGATE_METRICS
from logitnorm_plugin._core.digests import config_hash
from logitnorm_plugin._core.model_groups import GROUP_FIELD, describe_groups, group_of
from logitnorm_plugin._core.tables import mean_std

__all__ = ["aggregate", "distinct_labels", "group_label"]


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
    by = tuple(by) + (("Dataset",) if per_dataset and "Dataset" not in by else ())
    groups = {g: set(names) for g, names in (groups or {}).items()}
    table: dict[tuple, dict[str, list[Mapping[str, Any]]]] = {}
    labels: dict[Any, str] = {}
    rows = list(rows)
    model_labels = describe_groups(rows)
    for row in rows:
        key = (group_of(row), *(detector_group_of(row) if f == "Detector" else row.get(f)
                                for f in by))
        if "Detector" in by:
            labels.setdefault(detector_group_of(row), row.get("Detector"))
        model = row.get("model_id") or row.get("Model")
        table.setdefault(key, {}).setdefault(model, []).append(row)
    labels = distinct_labels(labels)
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
        entry: dict[str, Any] = {"Model": model_labels[key[0]], **dict(zip(by, key[1:]))}
        entry[GROUP_FIELD] = key[0]
        if "Detector" in entry:
            entry["Detector"] = labels[entry["Detector"]]
        entry["Seeds"] = len(models)
        entry["Datasets"] = max(n_sets) if n_sets else 0
        for name, values in per_model.items():
            mean, std = mean_std(values)
            entry[name], entry[f"{name}_std"] = mean, std
        out.append(entry)
    return out


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
