"""Labels of the models a comparison is given: ``LABEL=SPEC`` and unique defaults.

``logitnorm-ood bench --models`` takes trainer run folders and pytorch-ood registry keys. Two
runs of one architecture, loss and seed (say, two temperatures) carry the same model-card key,
and a table cannot tell them apart by it; :func:`model_specs` labels them by their folder names
instead, and ``LABEL=SPEC`` names any model explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.evaluation.specs import ModelSpec, check_unique_labels, resolve_model

__all__ = ["model_specs"]


def model_specs(models, download: bool = False) -> list[ModelSpec]:
    """:class:`~logitnorm_plugin.evaluation.specs.ModelSpec` s of ``--models``, with unique labels.

    An item is a trainer run folder or a pytorch-ood registry key, optionally named as
    ``LABEL=SPEC``; a mapping gives ``{label: spec}``. A label not given is the model card's key
    (``arch/dataset/loss/seed``) or the registry key; where two models would get the same one
    (e.g. two runs of one loss and seed with other temperatures), each run's folder name is
    used instead.

    :raises DuplicateModelLabelError: if two models still share a label (name them with
        ``LABEL=SPEC``)
    """
    if isinstance(models, Mapping):
        items = [(str(label), spec) for label, spec in models.items()]
    else:
        items = []
        for item in models:
            label, spec = None, item
            if isinstance(item, str) and "=" in item and not os.path.exists(item):
                label, spec = (part.strip() for part in item.split("=", 1))
                if not label or not spec:
                    raise UserError(f"--models takes SPEC or LABEL=SPEC, got {item!r}")
            items.append((label, spec))
    specs = [resolve_model(spec, label=label, download=download) for label, spec in items]
    given = [label is not None for label, _ in items]
    default_labels = [s.label for s, g in zip(specs, given) if not g]
    for spec, is_given in zip(specs, given):
        if not is_given and default_labels.count(spec.label) > 1 and spec.extra.get("path"):
            spec.label = os.path.basename(os.path.normpath(spec.extra["path"]))
    check_unique_labels(specs)
    return specs
