"""Conventions every floor shares, torch-free: result keys, the default temperature, the one
rule for names and the one hash of a configuration.

Nothing here imports torch, pytorch-ood or another module of the package, so listing names,
reading results and formatting tables stay light.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "DEFAULT_DETECTORS",
    "AGGREGATE_METRICS",
    "DEFAULT_T",
    "ID_DATASET",
    "ID_KEYS",
    "OOD_KEYS",
    "OPENOOD_FPR_KEY",
    "PAPER_AUPR_KEY",
    "PAPER_FPR_KEY",
    "REGISTRY_LOSS_NAMES",
    "ROW_ID_KEYS",
    "ROW_KEYS",
    "canonical_name",
    "dataset_tag",
    "detector_label",
    "safe_file_part",
]

#: LogitNorm's temperature when none is given: the first author's CIFAR-10 value (OpenOOD's
#: LogitNorm config, pytorch-ood's registry weights); pytorch-ood's own default is 1.0
DEFAULT_T = 0.04

#: result key of the LogitNorm paper's FPR95 (ID positive: share of OOD accepted when 95% of
#: the ID samples are kept); pytorch-ood's ``FPR95TPR`` treats OOD as positive
PAPER_FPR_KEY = "FPR95-ID95"

#: result key of the paper's AUPR: average precision with ID positive (scikit-learn's
#: ``average_precision_score``, step-wise), not pytorch-ood's trapezoidal ``AUPR-IN``
PAPER_AUPR_KEY = "AUPR-ID-AP"

#: result key of OpenOOD v1.5's FPR@95 (OOD positive, on ``roc_curve(drop_intermediate=True)``)
OPENOOD_FPR_KEY = "FPR95-OpenOOD"

#: OOD metrics of every result row, in table order (pytorch-ood's first, then the added ones;
#: :mod:`logitnorm_plugin.metrics` says whose convention each follows and how it treats ties)
OOD_KEYS = (
    "AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", PAPER_FPR_KEY, PAPER_AUPR_KEY,
    OPENOOD_FPR_KEY,
)

#: per-model ID metrics repeated on every row of the model
ID_KEYS = ("ACC", "ECE")

#: what identifies a result row
ROW_ID_KEYS = (
    "Model", "Loss", "Seed", "Arch", "Detector", "Dataset", "Group", "Benchmark", "Protocol",
)

#: keys of every result row, in table order
ROW_KEYS = ROW_ID_KEYS + OOD_KEYS + ID_KEYS

#: OOD metrics averaged over seeds and OOD sets by the result store
AGGREGATE_METRICS = (
    "AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", PAPER_FPR_KEY, "AUTC", PAPER_AUPR_KEY,
    OPENOOD_FPR_KEY,
)

#: the ``Dataset`` under which the ID test set's per-sample scores are kept
ID_DATASET = "ID"

#: pytorch-ood registry method names -> this package's loss names
REGISTRY_LOSS_NAMES = {
    "crossentropy": "cross_entropy",
    "logitnorm": "logitnorm",
    "oe": "outlier_exposure",
    "energy": "energy_regularized",
    "entropic": "entropic_open_set",
    "vos": "vos",
}


#: the detectors of a run that names none (bench, evaluate), in the order of the tables
DEFAULT_DETECTORS = ("msp", "odin", "energy", "maxlogit", "logitnorm")


def canonical_name(name: Any) -> str:
    """The one rule for names of losses, detectors, benchmarks, datasets, recipes and
    architectures: stripped, lower case, ``-`` read as ``_``. Two names are the same name when
    their canonical forms are equal; tables keep their display spelling (``wrn-40-2``)."""
    return str(name).strip().lower().replace("-", "_")


def dataset_tag(dataset: Any) -> str:
    """The dataset part of a model key and a run-folder name: the canonical name, or the folder
    name of an image-folder path."""
    text = str(dataset)
    if "/" in text or "\\" in text:
        return text.rstrip("/\\").replace("\\", "/").rpartition("/")[2]
    return canonical_name(text)


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))


def detector_label(name: str, kwargs: Any = None) -> str:
    """The table label of a detector configuration: its name, plus the arguments it was asked
    for (``logitnorm``, ``logitnorm(t=1)``, ``fakeplug:logitnorm``). Arguments filled in from
    the model (the training ``t``, ODIN's ``norm_std``) are not part of it: they belong to the
    model, and the result store keys them separately."""
    if not kwargs:
        return str(name)
    inner = ", ".join(f"{k}={_short_value(v)}" for k, v in sorted(dict(kwargs).items()))
    return f"{name}({inner})"


def safe_file_part(text: Any, limit: int = 80) -> str:
    """``text`` reduced to letters, digits, ``-``, ``_`` and ``.`` (others become ``_``; no
    leading dot), for file names built from names or file contents: never a path."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in str(text))
    out = out.lstrip(".") or "_"
    return out[:limit]
