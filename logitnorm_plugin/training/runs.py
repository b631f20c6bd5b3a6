"""Run folders: everything :func:`logitnorm_plugin.train` writes and everything that reads it.

One run lives in one folder::

    config.json      the resolved configuration (a TrainConfig) plus its ``runtime`` part
    checkpoint.pt    written atomically after every epoch: model, optimizer, scheduler, grad
                     scaler, RNG states of every process, history, and the digest of all of
                     it; what --resume continues (see :mod:`logitnorm_plugin.training.checkpoints`)
    checkpoint.prev.pt  the checkpoint before it, while the run is not finished
    metrics.jsonl    one line per epoch: train loss/accuracy, test (and val) accuracy, lr,
                     seconds, mean and std of the logit L2 norm on the ID test set
    logit_norm.png   the logit norm over epochs
    model.pt         the kept weights (a state dict)
    model.json       model card: pytorch-ood ``ModelEntry`` fields + provenance, and
                     ``card_sha256``: the SHA-256 of the card's own canonical JSON without that
                     field (:func:`~logitnorm_plugin._core.digests.json_sha256`)
    .lock            while a command writes the folder (:mod:`logitnorm_plugin._core.locks`)

Readers never trust a file further than its format: the card is used only after its
``card_sha256`` matched, weights only after their SHA-256 matched the card, checkpoints only
after their own digest matched; everything is read with ``torch.load(...,
weights_only=True)``; the architecture comes from the closed table of
:func:`logitnorm_plugin.registry.architectures.resolve_class`, never from an import path in a
file; a file name in a card is a plain name inside the run folder.

**A run folder belongs to one configuration** (:func:`check_run_folder`): training into a
folder that holds any run file (``config.json``, ``model.json``, ``model.pt``,
``metrics.jsonl``, a checkpoint) needs ``--resume``, and every configuration recorded there
(``config.json``, the card's, the checkpoint's) must equal the new one; ``--resume`` on a
folder without a run is an error, so a mistyped path never starts a training.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Union

from logitnorm_plugin._core import atomic, provenance, regular_files
from logitnorm_plugin._core.card_values import check_card_values
from logitnorm_plugin._core.conventions import dataset_tag
from logitnorm_plugin._core.digests import json_sha256, sha256_file
from logitnorm_plugin._core.errors import (
    ConfigMismatchError,
    MissingDataError,
    ModelIntegrityError,
    UntrustedFileError,
    UserError,
    one_line,
)
from logitnorm_plugin.registry.architectures import build_arch_for_state
from logitnorm_plugin.training import checkpoints
from logitnorm_plugin.training.checkpoints import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE

__all__ = [
    "CARD_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "PLOT_FILE",
    "RUN_FILES",
    "TrainResult",
    "check_run_folder",
    "config_differences",
    "load_checkpoint",
    "load_trained",
    "model_entry",
    "read_card",
    "read_config",
    "read_metrics",
    "run_files",
    "save_checkpoint",
    "seal_card",
    "sha256_file",
    "write_model",
    "write_config",
    "write_metrics",
]

CHECKPOINT_FORMAT = checkpoints.CHECKPOINT_FORMAT
#: 2: the card carries ``card_sha256``
CARD_FORMAT = 2
#: the card's field holding the digest of the rest of the card
CARD_DIGEST = "card_sha256"

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
MODEL_FILE = "model.pt"
CARD_FILE = "model.json"
PLOT_FILE = "logit_norm.png"

#: the files of a run folder that belong to one configuration
RUN_FILES = (CONFIG_FILE, CARD_FILE, MODEL_FILE, METRICS_FILE, CHECKPOINT_FILE,
             PREVIOUS_CHECKPOINT_FILE)

# config keys that may differ between a run and its resumption: where and how fast it runs,
# not what it computes (``amp`` changes the numbers and therefore is compared)
_NOT_COMPARED = ("runtime", "t_source", "t_from", "recipe_description")

PathLike = Union[str, os.PathLike]


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
    if not path.is_file() and regular_files.kind_of(path) is None:  # a FIFO: refused below
        raise MissingDataError(f"no {CONFIG_FILE} in {str(Path(run_dir))!r}: not a run folder")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ModelIntegrityError(f"{str(path)!r} is damaged: not a JSON object")
    return config


def _read_json(path: Path):
    try:
        # never through a link, never blocking on a FIFO: a run folder may come from others
        return json.loads(regular_files.read_text(path, "run folder's file"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelIntegrityError(
            f"{str(path)!r} is damaged: not valid JSON ({one_line(exc, 120)})"
        ) from exc


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


def save_checkpoint(run_dir: PathLike, state: Dict[str, Any], keep_previous: bool = True
                    ) -> Path:
    """Write ``checkpoint.pt`` atomically with its digest (plain types and tensors only); see
    :func:`logitnorm_plugin.training.checkpoints.save`."""
    return checkpoints.save(run_dir, state, keep_previous)


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` and
    verify its digest (:func:`logitnorm_plugin.training.checkpoints.load`).

    :raises UserError: for a file that is not such a checkpoint, is damaged or may be hostile
    """
    return checkpoints.load(path)


# -- one configuration per run folder -----------------------------------------------------------


def run_files(run_dir: PathLike) -> List[str]:
    """The names of :data:`RUN_FILES` present in ``run_dir``."""
    run_dir = Path(run_dir)
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_run_folder(run_dir: PathLike, config: Dict[str, Any], resume) -> None:
    """Refuse to train ``config`` into ``run_dir`` unless the folder is free for it.

    - ``resume=False``: the folder must hold no run file;
    - ``resume=True``: it must hold a run, and every configuration recorded there
      (``config.json``, the model card's) must equal ``config``;
    - ``resume="auto"``: as ``True`` if it holds a run, else as ``False``.

    The checkpoint's own configuration is compared by the trainer once it is read.

    :raises UserError: a run where none may be, or none where one must be
    :raises ConfigMismatchError: a recorded configuration differs (naming the file and keys)
    :raises ModelIntegrityError: a recorded configuration is damaged
    """
    run_dir = Path(run_dir)
    found = run_files(run_dir)
    if not found:
        if resume is True:
            where = ("the folder does not exist" if not run_dir.exists()
                     else f"it holds no run ({CONFIG_FILE}, {CHECKPOINT_FILE}, ...)")
            raise UserError(
                f"nothing to resume in {str(run_dir)!r}: {where}; check the path, or leave out "
                "--resume to start a new run there"
            )
        return
    if not resume:
        if set(found) & {CONFIG_FILE, METRICS_FILE, CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE}:
            raise UserError(
                f"{str(run_dir)!r} already holds a training run ({', '.join(found)}); pass "
                "--resume to continue it, or choose another --out folder"
            )
        raise UserError(
            f"{str(run_dir)!r} already holds a trained model; choose another --out folder"
        )
    recorded = []
    if CONFIG_FILE in found:
        recorded.append((CONFIG_FILE, read_config(run_dir)))
    if CARD_FILE in found:
        recorded.append((CARD_FILE, read_card(run_dir).get("config") or {}))
    if not recorded and CHECKPOINT_FILE not in found and PREVIOUS_CHECKPOINT_FILE not in found:
        raise UserError(
            f"{str(run_dir)!r} holds {', '.join(found)} but no {CONFIG_FILE}: not a run of "
            "this trainer, or a damaged one; choose another --out folder"
        )
    for name, old in recorded:
        check_same_config(run_dir, name, old, config)


def check_same_config(run_dir: PathLike, name: str, old: Dict[str, Any],
                      new: Dict[str, Any]) -> None:
    """:raises ConfigMismatchError: if the configuration recorded in ``run_dir / name``
    differs from ``new``"""
    diffs = config_differences(old, new)
    if diffs:
        raise ConfigMismatchError(
            f"cannot resume in {str(run_dir)!r}: its {name} records another configuration. "
            "Differing keys: " + "; ".join(diffs) + ". Leave out (or match) the options that "
            "differ to resume with the recorded configuration, or use another --out folder for "
            "a new run."
        )


# -- metrics.jsonl ------------------------------------------------------------------------------


def write_metrics(run_dir: PathLike, history: List[Dict[str, Any]]) -> Path:
    """Write ``metrics.jsonl`` (one JSON record per epoch) atomically."""
    lines = "".join(json.dumps(r) + "\n" for r in history)
    return atomic.write_text(Path(run_dir) / METRICS_FILE, lines)


def read_metrics(run_dir: PathLike) -> List[Dict[str, Any]]:
    """The per-epoch records of a run folder's ``metrics.jsonl``.

    :raises MissingDataError: if there is none
    :raises ModelIntegrityError: for a line that is not a JSON object with numbers under
        ``epoch``, ``logit_norm_mean`` and ``logit_norm_std`` (what a report draws)
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file() and regular_files.kind_of(path) is None:  # a FIFO: refused below
        raise MissingDataError(f"no {METRICS_FILE} in {str(Path(run_dir))!r}: not a run folder")
    text = regular_files.read_text(path, "run folder's file")
    try:
        records = [json.loads(line) for line in text.splitlines() if line]
    except ValueError as exc:  # UnicodeDecodeError included
        raise ModelIntegrityError(f"{str(path)!r} is damaged: not JSON lines "
                                  f"({one_line(exc, 120)})") from exc
    for i, record in enumerate(records, 1):
        if not (isinstance(record, dict) and all(
                isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)
                for k in ("epoch", "logit_norm_mean", "logit_norm_std"))):
            raise ModelIntegrityError(f"{str(path)!r} is damaged: record {i} is not an object "
                                      "with numbers under epoch, logit_norm_mean, logit_norm_std")
    return records


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

    run_dir = Path(run_dir)
    atomic.torch_save(state, run_dir / MODEL_FILE)
    digest = sha256_file(run_dir / MODEL_FILE)
    c = config
    by_epoch = {r["epoch"]: r for r in history}
    tag = dataset_tag(c["dataset"])
    loss_tag = c["loss"] if ":" not in c["loss"] else c["loss"].rpartition(":")[2].lower()
    t_text = f"t={c['t']:g}" if c["t"] is not None else "no temperature"
    own_t = (c.get("loss_kwargs") or {}).get("t")
    if c["t"] is None and isinstance(own_t, (int, float)):  # T2FNorm's tau: not LogitNorm's t
        t_text = f"its own t={own_t:g}"
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
    card[CARD_DIGEST] = json_sha256(card)
    atomic.write_json(run_dir / CARD_FILE, card)
    return card


def _card_path(path: PathLike) -> Path:
    path = Path(path)
    return path / CARD_FILE if path.is_dir() else path


def _seal_command(card_path: Path) -> str:
    return (f"python -c \"from logitnorm_plugin.training.runs import seal_card; "
            f"seal_card({str(card_path)!r})\"")


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def read_card(path: PathLike, verify: bool = True) -> Dict[str, Any]:
    """The model card of a run folder (or of a ``model.json`` path), after its ``card_sha256``
    matched its content.

    :param verify: check the card's digest and fields (``False``: only parse it)
    :raises MissingDataError: no card there
    :raises ModelIntegrityError: the card is damaged or was changed after training
    :raises UntrustedFileError: a field that a path or a digest is built from is malformed
    """
    card_path = _card_path(path)
    if not card_path.is_file() and regular_files.kind_of(card_path) is None:
        raise MissingDataError(
            f"no model card at {str(card_path)!r}: pass a run folder written by "
            "`logitnorm-ood train` (it holds model.json and model.pt) or its model.json"
        )
    card = _read_json(card_path)
    if not isinstance(card, dict):
        raise ModelIntegrityError(f"model card {str(card_path)!r} is damaged: not a JSON object")
    if not verify:
        return card
    stored = card.get(CARD_DIGEST)
    if stored is None:
        raise ModelIntegrityError(
            f"model card {str(card_path)!r} carries no {CARD_DIGEST} (format "
            f"{card.get('format')!r}, written before cards were sealed), so it cannot be "
            "verified. Train the model again, or, if you trust the file, seal it with "
            + _seal_command(card_path)
        )
    actual = json_sha256({k: v for k, v in card.items() if k != CARD_DIGEST})
    if stored != actual:
        raise ModelIntegrityError(
            f"model card {str(card_path)!r} was changed after training: its content has "
            f"SHA-256 {actual[:16]}..., its {CARD_DIGEST} says {str(stored)[:16]}...; refusing "
            "to use it. Restore the original, or, if you made the change and trust the file, "
            "seal it again with " + _seal_command(card_path)
        )
    _check_card_fields(card, card_path)
    return card


def _check_card_fields(card: Dict[str, Any], card_path: Path) -> None:
    """Fields that file names are built from must be plain: ``file`` a name inside the folder,
    ``sha256`` 64 hex digits."""
    name = card.get("file", MODEL_FILE)
    if (not isinstance(name, str) or name in ("", ".", "..") or name.startswith(".")
            or os.path.basename(name) != name or "\\" in name or "\0" in name):
        raise UntrustedFileError(
            f"model card {str(card_path)!r} names the weights file {str(name)[:80]!r}, which is "
            "not a plain file name inside its folder; refusing to read it"
        )
    if not isinstance(card.get("sha256"), str) or not _HEX64.match(card["sha256"]):
        raise UntrustedFileError(
            f"model card {str(card_path)!r}: 'sha256' is not 64 lower-case hex digits"
        )
    check_card_values(card, str(card_path))  # t, preprocessing, text fields (_core)


def seal_card(path: PathLike) -> Path:
    """Write ``card_sha256`` into a model card that you trust (one written before cards were
    sealed, or one you edited yourself), after checking that its weights still match its
    ``sha256``. Nothing else in the card changes.

    :param path: run folder or its ``model.json``
    :return: the card's path
    """
    card_path = _card_path(path)
    card = read_card(card_path, verify=False)
    card.pop(CARD_DIGEST, None)
    _check_card_fields(card, card_path)
    weights = card_path.parent / card.get("file", MODEL_FILE)
    if not weights.is_file() or sha256_file(weights) != card["sha256"]:
        raise ModelIntegrityError(
            f"{str(weights)!r} is missing or differs from the sha256 of {str(card_path)!r}; "
            "not sealing it"
        )
    card[CARD_DIGEST] = json_sha256(card)
    atomic.write_json(card_path, card)
    return card_path


def verified_weights(path: PathLike) -> tuple[Path, Dict[str, Any]]:
    """The weights file named by a run folder's card (or a ``model.json``) and the card, after
    the card's own digest and then the file's SHA-256 matched.

    :raises MissingDataError: if the card or the weights are missing
    :raises ModelIntegrityError: if the card or the weights differ from what they record
    """
    card_path = _card_path(path)
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
    pytorch-ood's ``load_model`` does, but only through the closed table of
    :func:`logitnorm_plugin.registry.architectures.resolve_class`) and the weights are loaded with
    ``torch.load(..., weights_only=True)`` only after the card's ``card_sha256`` and then the
    weights' SHA-256 matched.

    :param path: run folder or its ``model.json``
    :param map_location: where to put the weights
    :param return_card: also return the card: ``(model, card)``
    :return: the model in eval mode (or ``(model, card)``)
    :raises ModelIntegrityError: the card or ``model.pt`` does not match its digest
    :raises UntrustedFileError: an architecture outside the closed table, or weights holding
        objects other than tensors
    :raises MissingDataError: if the card or the weights file is missing
    """
    import torch


    weights, card = verified_weights(path)
    card_path = str(_card_path(path))
    state = checkpoints.load_weights_only(weights, "weights file", map_location=map_location)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UntrustedFileError(f"{str(weights)!r} is not a state dict of tensors")
    # built on the meta device and compared with the weights' shapes before any allocation
    model = build_arch_for_state(card.get("arch_class"), card.get("arch_kwargs"), state,
                                 card_path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelIntegrityError(
            f"the weights {str(weights)!r} do not fit the architecture of {card_path!r} "
            f"({one_line(exc, 200)})"
        ) from exc
    model = model.to(map_location).eval()
    if card.get("t") is not None:
        # the temperature it was trained with: create_detector gives it to detectors that
        # declare training_t_parameter (LogitNormDetector), as the evaluation engine does
        model.training_t = float(card["t"])
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
