"""The one rule for what is averaged over seeds: the model configuration.

Models are aggregated together (mean ± std "over seeds") only when their configuration is the
same in everything but the seed: loss and its arguments, architecture, recipe and its values,
training dataset (:func:`model_configuration`). ``bench``, ``report`` and ``export`` all group
through :func:`group_of` (via :func:`logitnorm_plugin.store.aggregation.aggregate`), so a table row
never mixes two models that differ in anything else. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from logitnorm_plugin._core.digests import config_hash

__all__ = ["CONFIG_FIELD", "GROUP_FIELD", "SEED_FIELDS", "describe_groups", "group_of",
           "model_configuration", "model_group", "model_group_fields"]

#: the row field holding the model group (a short hash of :func:`model_configuration`)
GROUP_FIELD = "model_group"

#: the row field holding the configuration itself (for labels)
CONFIG_FIELD = "model_config"

#: what tells the seeds of one configuration apart (left out of the configuration)
SEED_FIELDS = ("seed", "outlier_seed")

#: recorded with a training configuration but not part of the model (where it ran; where the
#: temperature was read from, whose value is in ``t`` and ``loss_kwargs``)
NOT_MODEL_FIELDS = ("runtime", "t_source", "t_from", "recipe_description")


def model_configuration(config: Mapping[str, Any] | None = None, **known: Any) -> dict:
    """A model's configuration without its seed.

    :param config: a full training configuration (``config.json`` of a run folder)
    :param known: what is known otherwise (``arch``, ``loss``, ``dataset``, ``t``, ...), used
        when ``config`` is ``None``; ``None`` values are left out
    """
    if config is not None:
        skip = set(SEED_FIELDS) | set(NOT_MODEL_FIELDS)
        return json.loads(json.dumps({k: v for k, v in config.items() if k not in skip},
                                     default=repr))
    return {k: v for k, v in known.items() if v is not None}


def model_group(configuration: Mapping[str, Any]) -> str:
    """The group key of a configuration (16 hex digits of its canonical JSON)."""
    return config_hash(dict(configuration))


def model_group_fields(configuration: Mapping[str, Any] | None) -> dict:
    """The row fields of a model's configuration (none when it is unknown)."""
    if configuration is None:
        return {}
    return {GROUP_FIELD: model_group(configuration), CONFIG_FIELD: dict(configuration)}


def group_of(row: Mapping[str, Any]) -> str:
    """The model group of a result row. Rows stored before groups were recorded carry none:
    each model is then its own group (never averaged with another one, which could differ in
    more than the seed)."""
    group = row.get(GROUP_FIELD)
    if group:
        return str(group)
    return "model:" + str(row.get("model_id") or row.get("Model"))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def describe_groups(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Group key -> a label that tells the groups apart.

    A group of one model keeps that model's label (``Model``); a group of several seeds is
    named by its loss and the configuration values in which it differs from the other groups
    of that loss (``"logitnorm (t=0.04)"``); labels still shared get the group key appended.
    """
    configs: dict[str, dict] = {}
    members: dict[str, set] = {}
    names: dict[str, set] = {}
    loss: dict[str, Any] = {}
    for row in rows:
        g = group_of(row)
        configs.setdefault(g, _flat(row.get(CONFIG_FIELD) or {}))
        members.setdefault(g, set()).add(row.get("model_id") or row.get("Model"))
        names.setdefault(g, set()).add(row.get("Model"))
        loss.setdefault(g, row.get("Loss"))
    labels = {}
    for g in configs:
        if len(members[g]) == 1 and len(names[g]) == 1 and next(iter(names[g])) is not None:
            labels[g] = str(next(iter(names[g])))
            continue
        peers = [h for h in configs if loss[h] == loss[g] and h != g]
        keys = sorted({k for h in peers for k in set(configs[h]) | set(configs[g])
                       if configs[h].get(k) != configs[g].get(k)} - {"loss_class"})
        if "t" in keys and any(k.endswith(".t") for k in keys):
            keys.remove("t")  # the temperature once, as the loss argument
        detail = ", ".join(f"{k.rpartition('.')[2] if k.startswith('loss_kwargs.') else k}="
                           f"{_value(configs[g].get(k))}" for k in keys)
        labels[g] = f"{loss[g]} ({detail})" if detail else str(loss[g])
    shared: dict[str, list] = {}
    for g, label in labels.items():
        shared.setdefault(label, []).append(g)
    for label, gs in shared.items():
        if len(gs) > 1:
            for g in gs:
                labels[g] = f"{label} [{g.removeprefix('model:')[:8]}]"
    return labels
