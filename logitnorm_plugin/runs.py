"""Run folders: everything :func:`logitnorm_plugin.train` writes and everything that reads it.

One run lives in one folder::

    config.json      the resolved configuration (a TrainConfig) plus its ``runtime`` part
    checkpoint.pt    written atomically after every epoch: model, optimizer, scheduler, grad
                     scaler, RNG states of every process, history; what --resume continues
    metrics.jsonl    one line per epoch: train loss/accuracy, test (and val) accuracy, lr,
                     seconds, mean and std of the logit L2 norm on the ID test set
    logit_norm.png   the logit norm over epochs
    model.pt         the kept weights (a state dict)
    model.json       model card: pytorch-ood ``ModelEntry`` fields + provenance

Readers never trust a file further than its format: checkpoints and weights are read with
``torch.load(..., weights_only=True)``, and weights only after their SHA-256 matched the card.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Union

from logitnorm_plugin import atomic
from logitnorm_plugin.errors import MissingDataError, ModelIntegrityError, UserError

__all__ = [
    "CARD_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "PLOT_FILE",
    "TrainResult",
    "config_differences",
    "load_checkpoint",
    "load_trained",
    "model_entry",
    "read_card",
    "read_config",
    "read_metrics",
    "save_checkpoint",
    "sha256_file",
    "write_model",
    "write_config",
    "write_metrics",
]

CHECKPOINT_FORMAT = 1
CARD_FORMAT = 1

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.pt"
CARD_FILE = "model.json"
PLOT_FILE = "logit_norm.png"

# config keys that may differ between a run and its resumption: where and how fast it runs,
# not what it computes (``amp`` changes the numbers and therefore is compared)
_NOT_COMPARED = ("runtime", "t_source", "t_from", "recipe_description")

PathLike = Union[str, os.PathLike]


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass
class TrainResult:
    """What :func:`logitnorm_plugin.train` returns; ``os.fspath(result)`` is the run folder, so
    it can be passed wherever a path is expected (e.g. :func:`load_trained`).

    :param run_dir: the run folder
    :param card: the model card (also in ``run_dir / "model.json"``)
    :param metrics: one record per epoch (also in ``run_dir / "metrics.jsonl"``)
    :param resumed_from_epoch: the checkpoint epoch this call continued from (0: fresh start)
    """

    run_dir: Path
    card: Dict[str, Any]
    metrics: List[Dict[str, Any]]
    resumed_from_epoch: int = 0

    def __fspath__(self) -> str:
        return str(self.run_dir)

    @property
    def model_path(self) -> Path:
        return self.run_dir / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.run_dir / CARD_FILE

    @property
    def final_accuracy(self) -> float:
        return float(self.card["metrics"]["final_accuracy"])

    @property
    def best_accuracy(self) -> float:
        return float(self.card["metrics"]["best_accuracy"])


# -- config.json --------------------------------------------------------------------------------


def write_config(run_dir: PathLike, config: Dict[str, Any], runtime: Dict[str, Any]) -> Path:
    """Write ``config.json``: the configuration and, under ``runtime``, where it ran."""
    return atomic.write_json(Path(run_dir) / CONFIG_FILE, {**config, "runtime": runtime})


def read_config(run_dir: PathLike) -> Dict[str, Any]:
    """The ``config.json`` of a run folder.

    :raises MissingDataError: if there is none
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MissingDataError(f"no {CONFIG_FILE} in {str(Path(run_dir))!r}: not a run folder")
    return json.loads(path.read_text(encoding="utf-8"))


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _compared(config: Dict[str, Any]) -> Dict[str, Any]:
    # as it reads back from JSON: tuples become lists
    kept = json.loads(json.dumps({k: v for k, v in config.items() if k not in _NOT_COMPARED}))
    return _flatten(kept)


def config_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """``"key: run folder has X, now Y"`` for every configuration value that differs between a
    run folder's configuration and a new one (where and how fast it runs is not compared)."""
    a, b = _compared(old), _compared(new)
    return [
        f"{k}: run folder has {a.get(k, '(unset)')!r}, now {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(unset)") != b.get(k, "(unset)")
    ]


# -- checkpoint.pt ------------------------------------------------------------------------------


def save_checkpoint(run_dir: PathLike, state: Dict[str, Any]) -> Path:
    """Write ``checkpoint.pt`` atomically (plain types and tensors only)."""
    return atomic.torch_save({"format": CHECKPOINT_FORMAT, **state},
                             Path(run_dir) / CHECKPOINT_FILE)


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    :raises UserError: for a file that is not such a checkpoint or is damaged
    """
    import torch

    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise UserError(
            f"cannot read the checkpoint {str(path)!r} ({type(exc).__name__}: {exc}); it was "
            "not written by this trainer or is damaged: train into another --out folder"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{str(path)!r} is not a checkpoint of this trainer (format "
            f"{CHECKPOINT_FORMAT}); train into another --out folder"
        )
    return ckpt


# -- metrics.jsonl ------------------------------------------------------------------------------


def write_metrics(run_dir: PathLike, history: List[Dict[str, Any]]) -> Path:
    """Write ``metrics.jsonl`` (one JSON record per epoch) atomically."""
    lines = "".join(json.dumps(r) + "\n" for r in history)
    return atomic.write_text(Path(run_dir) / METRICS_FILE, lines)


def read_metrics(run_dir: PathLike) -> List[Dict[str, Any]]:
    """The per-epoch records of a run folder's ``metrics.jsonl``."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise MissingDataError(f"no {METRICS_FILE} in {str(Path(run_dir))!r}: not a run folder")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# -- model.pt + model.json ----------------------------------------------------------------------


def write_model(run_dir: PathLike, state: Dict[str, Any], config: Dict[str, Any],
                history: List[Dict[str, Any]], kept_epoch: int, *, preprocessing,
                source: str | None, runtime: Dict[str, Any], wall_time_s: float,
                session_wall_time_s: float, device) -> Dict[str, Any]:
    """Write the kept weights (``model.pt``) and their model card (``model.json``).

    The card holds pytorch-ood's ``ModelEntry`` fields (key ``arch/dataset/loss/s<seed>``,
    ``arch_class``/``arch_kwargs``, the weights' ``sha256``, preprocessing, accuracies,
    source, description) and, beyond them, the recipe, the temperature and where it came from,
    the kept epoch, timings, the configuration and the provenance record.

    :return: the card
    """
    from logitnorm_plugin import provenance
    from logitnorm_plugin.conventions import dataset_tag

    run_dir = Path(run_dir)
    atomic.torch_save(state, run_dir / MODEL_FILE)
    digest = sha256_file(run_dir / MODEL_FILE)
    c = config
    by_epoch = {r["epoch"]: r for r in history}
    tag = dataset_tag(c["dataset"])
    loss_tag = c["loss"] if ":" not in c["loss"] else c["loss"].rpartition(":")[2].lower()
    t_text = f"t={c['t']:g}" if c["t"] is not None else "no temperature"
    card = {
        "key": f"{c['arch']}/{tag}/{loss_tag}/s{c['seed']}",
        "arch_class": c["arch_class"],
        "arch_kwargs": c["arch_kwargs"],
        "url": (run_dir / MODEL_FILE).resolve().as_uri(),
        "sha256": digest,
        "arch": c["arch"],
        "dataset": tag,
        "loss": loss_tag,
        "seed": f"s{c['seed']}",
        "preprocessing": {key: list(preprocessing[key]) for key in ("mean", "std", "size")},
        "metrics": {
            "final_accuracy": by_epoch[kept_epoch]["test_accuracy"],
            "best_accuracy": max(r["test_accuracy"] for r in history),
        },
        "source": source,
        "description": (
            f"{c['arch']} trained on {tag} with {loss_tag} ({t_text}) using the "
            f"'{c['recipe']}' recipe: {c['epochs']} epochs, "
            f"{'best-validation' if c['keep'] == 'best_val' else 'last'} epoch kept "
            f"(epoch {kept_epoch}), seed {c['seed']}."
            + (f" Source of t: {c['t_source']}." if c["t_source"] else "")
        ),
        # beyond pytorch-ood's ModelEntry
        "format": CARD_FORMAT,
        "file": MODEL_FILE,
        "recipe": c["recipe"],
        "t": c["t"],
        "t_source": c["t_source"] or None,
        "t_from": c["t_from"],
        "kept_epoch": kept_epoch,
        "final_logit_norm_mean": by_epoch[kept_epoch]["logit_norm_mean"],
        "wall_time_s": wall_time_s,
        "session_wall_time_s": session_wall_time_s,
        "config": c,
        "runtime": runtime,
        "provenance": provenance.collect(device=device),
    }
    atomic.write_json(run_dir / CARD_FILE, card)
    return card


def read_card(path: PathLike) -> Dict[str, Any]:
    """The model card of a run folder (or of a ``model.json`` path)."""
    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    if not card_path.is_file():
        raise MissingDataError(
            f"no model card at {str(card_path)!r}: pass a run folder written by "
            "`logitnorm-ood train` (it holds model.json and model.pt) or its model.json"
        )
    return json.loads(card_path.read_text(encoding="utf-8"))


def verified_weights(path: PathLike) -> tuple[Path, Dict[str, Any]]:
    """The weights file named by a run folder's card (or a ``model.json``) and the card, after
    the file's SHA-256 matched the card's.

    :raises MissingDataError: if the card or the weights are missing
    :raises ModelIntegrityError: if the weights differ from what the card records
    """
    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    card = read_card(card_path)
    weights = card_path.parent / card.get("file", MODEL_FILE)
    if not weights.is_file():
        raise MissingDataError(f"model card {str(card_path)!r} names {str(weights)!r}, missing")
    digest = sha256_file(weights)
    if digest != card["sha256"]:
        raise ModelIntegrityError(
            f"{str(weights)!r} has SHA-256 {digest}, but its model card records "
            f"{card['sha256']}: the file was changed or replaced after training; refusing to "
            "load it"
        )
    return weights, card


def load_trained(path: PathLike, map_location="cpu", return_card: bool = False):
    """Rebuild a trained model from its run folder (or ``model.json``), in eval mode.

    The architecture is rebuilt from the card's ``arch_class`` / ``arch_kwargs`` (as
    pytorch-ood's ``load_model`` does) and the weights are loaded with
    ``torch.load(..., weights_only=True)`` only after their SHA-256 matched the card.

    :param path: run folder or its ``model.json``
    :param map_location: where to put the weights
    :param return_card: also return the card: ``(model, card)``
    :return: the model in eval mode (or ``(model, card)``)
    :raises ModelIntegrityError: if ``model.pt`` does not match the card's ``sha256``
    :raises MissingDataError: if the card or the weights file is missing
    """
    import torch

    from logitnorm_plugin.models import resolve_class

    weights, card = verified_weights(path)
    model = resolve_class(card["arch_class"])(**card["arch_kwargs"])
    state = torch.load(weights, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    model = model.to(map_location).eval()
    return (model, card) if return_card else model


def model_entry(path_or_card, url: str | None = None):
    """A ``pytorch_ood.model.registry.ModelEntry`` for a trained model (for upstream export).

    :param path_or_card: run folder, ``model.json`` or a card dict
    :param url: download URL to record instead of the card's local ``file://`` URL
    """
    from pytorch_ood.model.registry import ImagePreprocessing, ModelEntry

    card = path_or_card if isinstance(path_or_card, dict) else read_card(path_or_card)
    pre = card.get("preprocessing")
    return ModelEntry(
        key=card["key"],
        arch_class=card["arch_class"],
        arch_kwargs=dict(card["arch_kwargs"]),
        url=url or card["url"],
        sha256=card["sha256"],
        arch=card["arch"],
        dataset=card["dataset"],
        loss=card["loss"],
        seed=card["seed"],
        preprocessing=ImagePreprocessing(
            mean=tuple(pre["mean"]), std=tuple(pre["std"]), size=tuple(pre["size"])
        )
        if pre
        else None,
        metrics=dict(card["metrics"]),
        source=card.get("source"),
        description=card.get("description", ""),
    )
