"""Training: a recipe in, a checkpoint and a registry-ready model card out.

:func:`train` trains any loss of the ``pytorch_ood.losses`` registry group on an ID dataset
with a named recipe (:mod:`logitnorm_plugin.recipes`); ``logitnorm-ood train`` is its command
line. One run lives in one folder::

    config.json      the resolved configuration, every value the run used
    checkpoint.pt    written atomically after every epoch: model, optimizer, scheduler, grad
                     scaler, RNG states of every process, history; what --resume continues
    metrics.jsonl    one line per epoch: train loss/accuracy, test (and val) accuracy, lr,
                     seconds, mean and std of the logit L2 norm on the ID test set
    logit_norm.png   the logit norm over epochs (overlay several runs with
                     :func:`logitnorm_plugin.plots.plot_logit_norms`)
    model.pt         the kept weights (a state dict)
    model.json       model card: pytorch-ood ``ModelEntry`` fields + provenance

The fast path, the same code on every device:

- the training set sits on the device as uint8 (1 byte per pixel); batches are gathered by
  index, augmented (:mod:`logitnorm_plugin.augment`) and normalised there, no DataLoader;
- bf16 autocast on CUDA with the loss in fp32; ``channels_last``; ``torch.compile``
  (``mode="reduce-overhead"``, i.e. CUDA graphs, on one GPU); fused SGD;
- no host synchronisation inside the loop: loss and accuracy are summed on the device and read
  once per epoch, and a non-finite loss is noticed from a device-side "first bad step" index
  read every ``check_every`` steps (it stops the run with the epoch and step).

The CPU defaults switch off what does not pay on CPU (autocast, compile, channels_last; see
``benchmarks/train_throughput.py``). Under ``torchrun`` the same code trains with DDP (see
:mod:`logitnorm_plugin.distributed`): the shuffled index list is sharded per rank, the batch
size is the global one, only rank 0 writes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import inspect
import json
import math
import os
import random
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from logitnorm_plugin import atomic, distributed, recipes
from logitnorm_plugin.errors import (
    ConfigMismatchError,
    MissingDataError,
    ModelIntegrityError,
    TrainingDivergedError,
    UserError,
)

__all__ = [
    "TrainResult",
    "TrainStep",
    "fast_path_defaults",
    "ModelIntegrityError",
    "train",
    "load_trained",
    "read_card",
    "read_metrics",
    "model_entry",
    "parse_loss_args",
    "resolve_config",
    "sha256_file",
    "cli_arguments",
    "cli_main",
]

CONFIG_FORMAT = 1
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

# "no non-finite loss seen yet" for the device-side first-bad-step index
_NO_BAD_STEP = 2**62


# --------------------------------------------------------------------------------------------
# the training step (shared with benchmarks/train_throughput.py)
# --------------------------------------------------------------------------------------------


def _sync_free_loss(loss_fn: Callable) -> Callable:
    """The loss to call in the hot loop.

    pytorch-ood's ``CrossEntropyLoss`` asks ``is_unknown(targets).any()`` on every call, which
    makes the host wait for the GPU each step. Training labels are all ID (the trainer checks
    them once before training), so plain ``F.cross_entropy`` with the same reduction gives the
    same value without the wait. Every other loss is called as it is.
    """
    try:
        from pytorch_ood.loss import CrossEntropyLoss
    except ImportError:  # pragma: no cover - pytorch-ood is a dependency
        return loss_fn
    if type(loss_fn) is CrossEntropyLoss:
        reduction = loss_fn.reduction or "none"

        def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
            return nn.functional.cross_entropy(logits, target, reduction=reduction)

        return cross_entropy
    return loss_fn


class TrainStep:
    """One optimisation step of the fast path, callable on a uint8 batch already on the device.

    augment (optional) -> normalise -> forward under autocast -> loss in fp32 -> backward ->
    optimizer (through the grad scaler) -> per-iteration scheduler step. Loss sum, correct
    predictions and the index of the first step with a non-finite loss accumulate in device
    tensors; :meth:`collect` reads them (the only synchronisation, once per epoch) and
    :meth:`first_bad_step` checks for divergence when asked.

    :param model: the network (already on the device, in the wanted memory format)
    :param loss_fn: ``loss_fn(logits, target)`` returning a scalar (any other shape is averaged)
    :param optimizer: the optimizer of ``model``'s parameters
    :param normalize: uint8 ``B x C x H x W`` -> normalised float32 (e.g.
        :meth:`ImageTensors.normalize <logitnorm_plugin.data.ImageTensors.normalize>`)
    :param augment: callable on uint8 batches (e.g. :class:`~logitnorm_plugin.augment.
        DeviceAugment`), or ``None``
    :param amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or ``None``
    :param channels_last: feed the network ``channels_last`` batches
    :param compile_mode: ``None`` (eager) or a ``torch.compile`` mode for the forward pass
    :param scaler: a ``torch.amp.GradScaler`` (needed for fp16 autocast), or ``None``
    :param scheduler: a learning-rate scheduler stepped after every optimizer step, or ``None``
    :param forward_module: what to call for the forward pass (a DDP wrapper of ``model``);
        default ``model``
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        normalize: Callable[[Tensor], Tensor],
        augment: Callable[[Tensor], Tensor] | None = None,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile_mode: str | None = None,
        scaler=None,
        scheduler=None,
        forward_module: nn.Module | None = None,
    ):
        self.model = model
        self.loss_fn = _sync_free_loss(loss_fn)
        self.optimizer = optimizer
        self.normalize = normalize
        self.augment = augment
        self.amp_dtype = amp_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scaler = scaler
        self.scheduler = scheduler
        self.device = next(model.parameters()).device
        eager = forward_module if forward_module is not None else model
        self._eager = eager
        self.compile_mode = compile_mode
        self._forward = eager
        if compile_mode is not None:
            self._forward = torch.compile(eager, mode=compile_mode, dynamic=False)
        # CUDA-graph trees want to know where an iteration starts
        self._mark_step = compile_mode in ("reduce-overhead", "max-autotune") and (
            self.device.type == "cuda"
        )
        self._compiled_ok = compile_mode is None
        self.reset()

    def reset(self) -> None:
        """Zero the running sums (start of an epoch)."""
        self._sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss*n, correct
        self._count = 0
        self._steps = torch.zeros((), dtype=torch.int64, device=self.device)
        self._first_bad = torch.full((), _NO_BAD_STEP, dtype=torch.int64, device=self.device)
        self.steps = 0

    def _call_forward(self, x: Tensor) -> Tensor:
        if self._compiled_ok:
            return self._forward(x)
        try:  # first call of a compiled forward: compilation happens here
            out = self._forward(x)
            self._compiled_ok = True
            return out
        except Exception as exc:  # a backend that cannot compile this model here
            warnings.warn(
                f"torch.compile failed ({type(exc).__name__}: {exc}); training eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            self._forward, self._mark_step, self._compiled_ok = self._eager, False, True
            self.compile_mode = None
            return self._forward(x)

    def __call__(self, images: Tensor, labels: Tensor) -> None:
        """Train on one batch.

        :param images: ``B x C x H x W`` uint8 on the device
        :param labels: ``B`` int64 on the device, all in ``0 .. C-1``
        """
        if self._mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        if self.augment is not None:
            images = self.augment(images)
        x = self.normalize(images.contiguous(memory_format=self.memory_format))
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            logits = self._call_forward(x)
        logits = logits.float()
        loss = self.loss_fn(logits, labels)
        if loss.dim() != 0:
            loss = loss.mean()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        with torch.no_grad():
            n = labels.shape[0]
            loss = loss.detach()
            self._steps += 1
            self._sums[0] += loss.double() * n
            self._sums[1] += (logits.argmax(dim=1) == labels).sum()
            bad = ~torch.isfinite(loss) & (self._first_bad == _NO_BAD_STEP)
            self._first_bad = torch.where(bad, self._steps, self._first_bad)
        self._count += n
        self.steps += 1

    def first_bad_step(self, ctx: distributed.DistContext | None = None) -> int | None:
        """1-based step (since :meth:`reset`) whose loss was first non-finite on any process,
        or ``None``. Synchronises."""
        bad = self._first_bad.clone()
        if ctx is not None:
            ctx.all_reduce_min(bad)
        value = int(bad.item())
        return None if value >= _NO_BAD_STEP else value

    def collect(self, ctx: distributed.DistContext | None = None) -> Dict[str, float]:
        """Loss and accuracy over the steps since :meth:`reset`, summed over processes."""
        sums = torch.cat(
            [self._sums, torch.tensor([float(self._count)], dtype=torch.float64).to(self.device)]
        )
        if ctx is not None:
            ctx.all_reduce_sum([sums])
        loss_sum, correct, count = sums.tolist()
        count = max(count, 1.0)
        return {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons and files."""
    return json.loads(json.dumps(obj))


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
    return _flatten(_jsonable({k: v for k, v in config.items() if k not in _NOT_COMPARED}))


def _config_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    a, b = _compared(old), _compared(new)
    return [
        f"{k}: run folder has {a.get(k, '(unset)')!r}, now {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(unset)") != b.get(k, "(unset)")
    ]


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered in ("none", "null"):
            return None
        return text


def parse_loss_args(items: List[str] | None, option: str = "--loss-arg") -> Dict[str, Any]:
    """``["t=0.04", "reduction=mean"]`` -> ``{"t": 0.04, "reduction": "mean"}``.

    Values are Python literals where they parse as one (numbers, booleans, ``None``,
    quoted strings) and strings otherwise.

    :raises UserError: for an item without ``=``
    """
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} expects KEY=VALUE (e.g. t=0.04), got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _loss_identity(loss) -> Tuple[str, type]:
    """``(name recorded in the config, class)`` of a loss name or class."""
    from logitnorm_plugin import registry

    cls = registry.get_loss_class(loss)
    if isinstance(loss, str):
        return registry.normalize(loss.rpartition(":")[2]), cls
    return f"{cls.__module__}:{cls.__qualname__}", cls


def _accepts(cls: type, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _read_t_from(path) -> Tuple[float, str]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingDataError(
            f"--t-from file {str(path)!r} does not exist; write one with "
            "`logitnorm-ood tune-t` (it records the chosen temperature as 'chosen_t')"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        t = float(data["chosen_t"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"--t-from file {str(path)!r} has no numeric 'chosen_t' ({type(exc).__name__}: "
            f"{exc}); expected the recommended_t.json written by `logitnorm-ood tune-t`"
        ) from exc
    if not math.isfinite(t) or t <= 0:
        raise UserError(f"--t-from file {str(path)!r}: chosen_t must be > 0, got {t}")
    return t, str(path.resolve())


def _dataset_tag(dataset: str) -> str:
    """The dataset part of a model key: the name, or the folder name of a path."""
    text = str(dataset)
    return Path(text).name if ("/" in text or os.sep in text) else text.lower()


def _dataset_key(dataset: str) -> str:
    """The dataset as recorded in the config: a known name in canonical form, else the path."""
    from logitnorm_plugin.data import DATASETS

    key = str(dataset).strip().lower().replace("-", "_")
    return key if key in DATASETS else str(dataset)


def _amp_dtype(amp, device: torch.device) -> torch.dtype | None:
    if amp is None:
        amp = device.type == "cuda"
    if amp is False:
        return None
    if amp is True:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16}
    if str(amp).lower() not in names:
        raise UserError(f"amp must be true, false, 'bf16' or 'fp16', got {amp!r}")
    return names[str(amp).lower()]


def _amp_name(dtype: torch.dtype | None) -> str | None:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: None}[dtype]


def fast_path_defaults(device, world_size: int = 1, deterministic: bool = False,
                       amp=None, compile=None, channels_last=None) -> Dict[str, Any]:
    """The fast-path settings :func:`train` uses on ``device`` for the given switches
    (``None``: the device default): ``amp_dtype``, ``channels_last``, ``compile_mode``.

    Defaults: bf16 autocast, channels_last and ``torch.compile`` on CUDA (CUDA graphs on one
    GPU); all off on CPU, where they do not pay (measured by
    ``benchmarks/train_throughput.py``); compile off in deterministic mode.
    """
    device = torch.device(device)
    return {
        "amp_dtype": _amp_dtype(amp, device),
        "channels_last": bool(device.type == "cuda" if channels_last is None else channels_last),
        "compile_mode": _compile_mode(compile, device, world_size, deterministic),
    }


def _compile_mode(compile_, device: torch.device, world_size: int, deterministic: bool):
    if compile_ is None:
        compile_ = device.type == "cuda" and not deterministic
    if compile_ is False:
        return None
    if isinstance(compile_, str):
        return compile_
    # CUDA graphs on one GPU; DDP's gradient hooks run between graph segments, so keep the
    # default mode there
    return "reduce-overhead" if device.type == "cuda" and world_size == 1 else "default"


def _lr_factor(config: Dict[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate factor after ``step`` optimizer steps (closed form, no drift)."""
    schedule = config["schedule"]
    warmup = float(config.get("warmup_epochs", 0.0)) * steps_per_epoch
    if schedule == "multistep":
        milestones = sorted(int(m) for m in config["milestones"])
        gamma = float(config["gamma"])

        def base(step: int) -> float:
            epoch = step // steps_per_epoch  # MultiStepLR stepped once per epoch
            return gamma ** sum(1 for m in milestones if epoch >= m)

    elif schedule == "cosine":
        total = max(1, int(config["epochs"]) * steps_per_epoch)
        floor = float(config["lr_min"]) / float(config["lr"])

        def base(step: int) -> float:
            progress = min(step, total) / total
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    else:

        def base(step: int) -> float:
            return 1.0

    if warmup <= 0:
        return base

    def factor(step: int) -> float:
        return base(step) * min(1.0, (step + 1) / warmup)

    return factor


# --------------------------------------------------------------------------------------------
# RNG state (plain types and tensors only, so torch.load(weights_only=True) reads it)
# --------------------------------------------------------------------------------------------


def _rng_state(device: torch.device, augment) -> Dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "random": [int(py_state[0]), [int(v) for v in py_state[1]], py_state[2]],
        "augment": augment.get_state() if augment is not None else None,
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def _set_rng_state(state: Dict[str, Any], device: torch.device, augment) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if augment is not None and state.get("augment") is not None:
        augment.set_state(state["augment"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------------
# evaluation during training
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    data,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    ctx: distributed.DistContext,
) -> Dict[str, float]:
    """Accuracy and logit-norm statistics of ``model`` on ``data`` (this process's shard),
    combined over processes."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct, n, sum|z|, sum|z|^2
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, y in data.batches(batch_size, device=device):
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = model(x.contiguous(memory_format=fmt))
        logits = logits.float()
        norms = torch.linalg.vector_norm(logits, dim=1).double()
        sums[0] += (logits.argmax(dim=1) == y).sum()
        sums[1] += y.shape[0]
        sums[2] += norms.sum()
        sums[3] += (norms * norms).sum()
    ctx.all_reduce_sum([sums])
    correct, n, s1, s2 = sums.tolist()
    model.train(was_training)
    n = max(n, 1.0)
    mean = s1 / n
    return {
        "accuracy": correct / n,
        "logit_norm_mean": mean,
        "logit_norm_std": math.sqrt(max(s2 / n - mean * mean, 0.0)),
    }


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns; ``os.fspath(result)`` is the run folder, so it can be passed
    wherever a path is expected (e.g. :func:`load_trained`).

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


def read_metrics(run_dir: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """The per-epoch records of a run folder's ``metrics.jsonl``."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise MissingDataError(f"no {METRICS_FILE} in {str(Path(run_dir))!r}: not a run folder")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_card(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The model card of a run folder (or of a ``model.json`` path)."""
    path = Path(path)
    card_path = path / CARD_FILE if path.is_dir() else path
    if not card_path.is_file():
        raise MissingDataError(
            f"no model card at {str(card_path)!r}: pass a run folder written by "
            "`logitnorm-ood train` (it holds model.json and model.pt) or its model.json"
        )
    return json.loads(card_path.read_text(encoding="utf-8"))


def load_trained(
    path: Union[str, os.PathLike],
    map_location="cpu",
    return_card: bool = False,
):
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
    from logitnorm_plugin.models import resolve_class

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


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


def resolve_config(
    dataset: str = "digits",
    arch: str | None = None,
    loss="logitnorm",
    loss_kwargs: Dict[str, Any] | None = None,
    recipe=None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    t_from=None,
    arch_kwargs: Dict[str, Any] | None = None,
    amp_dtype: torch.dtype | None = None,
    eval_split: str = "test",
    **overrides,
) -> Tuple[Dict[str, Any], type]:
    """The full configuration of a run (without its ``runtime`` part) and the loss class.

    Every name is checked here, before any data is read or any folder is written.

    :raises UnknownNameError: unknown recipe, loss, architecture or dataset (closest match)
    :raises UserError: conflicting or invalid arguments
    """
    from logitnorm_plugin.data import dataset_meta
    from logitnorm_plugin.models import arch_spec, resolve_class

    rec = recipes.get_recipe(recipe if recipe is not None else recipes.default_recipe_for(dataset))
    fields = {f.name for f in dataclasses.fields(recipes.Recipe)} - {
        "name", "description", "arch", "arch_kwargs", "t", "source"
    }
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown training option(s) {unknown}; recipe fields: {sorted(fields)}")
    loss_name, loss_cls = _loss_identity(loss)
    meta = dataset_meta(dataset)
    arch_name = (arch or rec.arch).strip().lower().replace("_", "-")
    kwargs = dict(rec.arch_kwargs) if arch_name == rec.arch else {}
    kwargs.update(arch_kwargs or {})
    arch_class, resolved_arch_kwargs = arch_spec(
        arch_name, meta["num_classes"], meta["in_channels"], **kwargs
    )
    try:
        inspect.signature(resolve_class(arch_class)).bind(**resolved_arch_kwargs)
    except TypeError as exc:
        raise UserError(
            f"architecture '{arch_name}' rejects the arguments {resolved_arch_kwargs}: {exc}"
        ) from exc

    loss_kwargs = dict(loss_kwargs or {})
    t, t_source, t_path = None, "", None
    if t_from is not None:
        if "t" in loss_kwargs:
            raise UserError(
                "give the temperature either as --loss-arg t=... or --t-from, not both"
            )
        if not _accepts(loss_cls, "t"):
            raise UserError(f"--t-from: loss '{loss_name}' has no temperature argument 't'")
        t, t_path = _read_t_from(t_from)
        loss_kwargs["t"] = t
        t_source = f"chosen_t of {t_path} (logitnorm-ood tune-t)"
    elif "t" in loss_kwargs:
        t = loss_kwargs["t"]
        t_source = "given by the caller (--loss-arg t=...)"
    elif _accepts(loss_cls, "t"):
        t, t_source = rec.t_for(_dataset_tag(dataset))
        if t is not None:
            loss_kwargs["t"] = t
    # build it once now: bad arguments fail here with a clear message
    try:
        loss_cls(**loss_kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"loss '{loss_name}' rejects the arguments {loss_kwargs}: {exc}") from exc

    values = rec.to_dict()
    values.update(overrides)
    for key, given in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr)):
        if given is not None:
            values[key] = given
    if int(values["epochs"]) < 1 or int(values["batch_size"]) < 1 or float(values["lr"]) <= 0:
        raise UserError("epochs and batch size must be >= 1 and the learning rate > 0")
    config = {
        "format": CONFIG_FORMAT,
        "dataset": _dataset_key(dataset),
        "num_classes": int(meta["num_classes"]),
        "in_channels": int(meta["in_channels"]),
        "preprocessing": {
            "mean": [float(v) for v in meta["mean"]],
            "std": [float(v) for v in meta["std"]],
            "size": [int(v) for v in meta["size"]],
        },
        "arch": arch_name,
        "arch_class": arch_class,
        "arch_kwargs": resolved_arch_kwargs,
        "loss": loss_name,
        "loss_class": f"{loss_cls.__module__}.{loss_cls.__qualname__}",
        "loss_kwargs": loss_kwargs,
        "t": t,
        "t_source": t_source,
        "t_from": t_path,
        "recipe": rec.name,
        "recipe_description": rec.description,
        "epochs": int(values["epochs"]),
        "batch_size": int(values["batch_size"]),
        "lr": float(values["lr"]),
        "momentum": float(values["momentum"]),
        "weight_decay": float(values["weight_decay"]),
        "nesterov": bool(values["nesterov"]),
        "schedule": values["schedule"],
        "milestones": [int(m) for m in values["milestones"]],
        "gamma": float(values["gamma"]),
        "lr_min": float(values["lr_min"]),
        "warmup_epochs": float(values["warmup_epochs"]),
        "crop_padding": int(values["crop_padding"]),
        "flip": bool(values["flip"]),
        "drop_last": bool(values["drop_last"]),
        "train_split": values["train_split"],
        "keep": values["keep"],
        "split_seed": 0,
        "seed": int(seed),
        "amp": _amp_name(amp_dtype),
    }
    if eval_split not in ("test", "val"):
        raise UserError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
    if eval_split == "val" and config["train_split"] != "train":
        raise UserError("eval_split='val' needs train_split='train' (the val split is held out)")
    config["eval_split"] = eval_split
    if config["keep"] == "best_val" and config["train_split"] != "train":
        raise UserError("keep='best_val' needs train_split='train' (the val split is held out)")
    return config, loss_cls


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


class _Run:
    """State of one training run in one process (rank)."""

    def __init__(self, config, loss_cls, runtime, ctx, device, out: Path, progress: bool):
        self.config, self.loss_cls, self.runtime = config, loss_cls, runtime
        self.ctx, self.device, self.out, self.progress = ctx, device, out, progress
        self.amp_dtype = _amp_dtype(config["amp"] or False, device)
        self.history: List[Dict[str, Any]] = []
        self.best = {"metric": None, "value": None, "epoch": None}
        self.best_state: Dict[str, Tensor] | None = None
        self.epoch = 0
        self.global_step = 0
        self.train_seconds = 0.0

    # -- set-up -------------------------------------------------------------------------------

    def load_data(self, data_root, download: bool) -> None:
        from logitnorm_plugin.data import load_split

        c = self.config
        # every rank reads (the files are shared); only the tensors on this device are used
        train = load_split(c["dataset"], c["train_split"], data_root, download, c["split_seed"])
        # the per-epoch evaluation set ("test" unless a tuning run keeps the test split unseen)
        test = load_split(
            c["dataset"], c.get("eval_split", "test"), data_root, download, c["split_seed"]
        )
        val = None
        if c["keep"] == "best_val":
            val = load_split(c["dataset"], "val", data_root, download, c["split_seed"])
        labels = train.labels
        if len(labels) == 0:
            raise UserError(f"dataset {c['dataset']!r} has no training images")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= c["num_classes"]:
            raise UserError(
                f"training labels of {c['dataset']!r} span {lo}..{hi}, expected "
                f"0..{c['num_classes'] - 1}"
            )
        world = self.ctx.world_size
        if c["batch_size"] % world:
            raise UserError(
                f"batch size {c['batch_size']} (global) is not divisible by the {world} processes"
            )
        self.local_batch = c["batch_size"] // world
        per_rank = math.ceil(len(train) / world)
        if c["drop_last"] and per_rank < self.local_batch:
            raise UserError(
                f"batch size {c['batch_size']} is larger than the {len(train)} training images "
                "with drop_last: no step would run"
            )
        if c["drop_last"]:
            self.steps_per_epoch = per_rank // self.local_batch
        else:
            self.steps_per_epoch = math.ceil(per_rank / self.local_batch)
        self.train = train.to(self.device)
        self.preprocessing = train.preprocessing

        def shard(ds):
            if ds is None or not self.ctx.enabled:
                return ds.to(self.device) if ds is not None else None
            idx = torch.arange(self.ctx.rank, len(ds), world)
            return ds.subset(idx).to(self.device)

        self.test = shard(test)
        self.val = shard(val)

    def build(self) -> None:
        from logitnorm_plugin.augment import DeviceAugment
        from logitnorm_plugin.models import resolve_class

        c, rt = self.config, self.runtime
        torch.manual_seed(c["seed"])
        np.random.seed(c["seed"])
        random.seed(c["seed"])
        self.model = resolve_class(c["arch_class"])(**c["arch_kwargs"]).to(self.device)
        if self.ctx.rank > 0:
            # same initial weights everywhere (same seed), but each rank its own dropout masks
            torch.manual_seed(c["seed"] * 1009 + 7919 * self.ctx.rank)
        self.channels_last = bool(rt["channels_last"])
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        forward_module = self.model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward_module = DistributedDataParallel(self.model, device_ids=ids)
        extra = {}
        if self.device.type == "cuda":
            extra["fused"] = True
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=c["lr"],
            momentum=c["momentum"],
            weight_decay=c["weight_decay"],
            nesterov=c["nesterov"],
            **extra,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_factor(c, self.steps_per_epoch)
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        # shuffling on the CPU: the same permutation on every rank and every device type
        self.shuffle = torch.Generator()
        self.shuffle.manual_seed(c["seed"])
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.augment = DeviceAugment(
            c["crop_padding"], c["flip"], self.device,
            seed=c["seed"] * 1009 + 17 + self.ctx.rank, memory_format=fmt,
        )
        self.loss_fn = self.loss_cls(**c["loss_kwargs"])
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn = self.loss_fn.to(self.device)
        self.step = TrainStep(
            self.model,
            self.loss_fn,
            self.optimizer,
            normalize=self.train.normalize,
            augment=self.augment if self.augment.active else None,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
            compile_mode=rt["compile_mode"],
            scaler=self.scaler,
            scheduler=self.scheduler,
            forward_module=forward_module,
        )

    # -- checkpoints --------------------------------------------------------------------------

    def _cpu_state(self) -> Dict[str, Tensor]:
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in
                self.model.state_dict().items()}

    def save_checkpoint(self) -> None:
        rng = self.ctx.gather_objects(_rng_state(self.device, self.augment))
        if not self.ctx.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self._cpu_state(),
            "best_model": self.best_state,
            "best": dict(self.best),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"shuffle": self.shuffle.get_state(), "per_rank": rng},
            "history": self.history,
            "train_seconds": self.train_seconds,
            "config": self.config,
            "runtime": self.runtime,
        }
        atomic.torch_save(state, self.out / CHECKPOINT_FILE)
        self.write_metrics()

    def write_metrics(self) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic.write_text(self.out / METRICS_FILE, lines)

    def restore(self, ckpt: Dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.shuffle.set_state(ckpt["rng"]["shuffle"])
        per_rank = ckpt["rng"]["per_rank"]
        if len(per_rank) == self.ctx.world_size:
            _set_rng_state(per_rank[self.ctx.rank], self.device, self.augment)
        else:
            # resumed with another number of processes: a fresh, seeded stream per rank
            s = self.config["seed"] * 100003 + ckpt["epoch"] * 101 + self.ctx.rank
            torch.manual_seed(s)
            np.random.seed(s % 2**32)
            random.seed(s)
            self.augment.generator.manual_seed(s + 1)
        self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.history = list(ckpt["history"])
        self.best = dict(ckpt["best"])
        self.best_state = ckpt["best_model"]
        self.train_seconds = float(ckpt["train_seconds"])

    # -- the loop -----------------------------------------------------------------------------

    def _indices(self) -> Tensor:
        perm = torch.randperm(len(self.train), generator=self.shuffle)
        perm = distributed.shard_indices(perm, self.ctx.rank, self.ctx.world_size)
        return perm.to(self.device)

    def _diverged(self, bad_step: int, steps: int) -> TrainingDivergedError:
        last = self.out / CHECKPOINT_FILE
        if self.epoch > 0:
            kept = f"The last good checkpoint (epoch {self.epoch}) is kept: {last}."
        else:
            kept = "No checkpoint was written (it failed in the first epoch)."
        global_bad = self.global_step - self.step.steps + bad_step
        lr = self.config["lr"] * _lr_factor(self.config, self.steps_per_epoch)(global_bad - 1)
        return TrainingDivergedError(
            f"training diverged: the loss became NaN or infinite at epoch {self.epoch + 1}, "
            f"step {bad_step} of {steps} (global step {global_bad}, "
            f"lr {lr:.4g}). {kept} Lower the learning rate or check the loss arguments "
            f"(loss '{self.config['loss']}', {self.config['loss_kwargs']}) and train into a "
            "new --out folder."
        )

    def run_epoch(self) -> Dict[str, Any]:
        from tqdm.auto import tqdm

        c, rt = self.config, self.runtime
        start = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.train()
        self.step.reset()
        perm = self._indices()
        images, labels = self.train.images, self.train.labels
        bs, steps = self.local_batch, self.steps_per_epoch
        check_every = int(rt["check_every"]) if rt["check_every"] else 0
        bar = tqdm(
            total=steps, desc=f"epoch {self.epoch + 1}/{c['epochs']}", leave=False,
            disable=self._bar_disabled(), file=sys.stderr, unit="step",
        )
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            self.step(images.index_select(0, idx), labels.index_select(0, idx))
            self.global_step += 1
            bar.update(1)
            if check_every and (i + 1) % check_every == 0 and i + 1 < steps:
                bad = self.step.first_bad_step(self.ctx)
                if bad is not None:
                    bar.close()
                    raise self._diverged(bad, steps)
        bar.close()
        bad = self.step.first_bad_step(self.ctx)
        if bad is not None:
            raise self._diverged(bad, steps)
        stats = self.step.collect(self.ctx)  # synchronises: the training time ends here
        train_seconds = time.perf_counter() - start
        self.ctx.broadcast_buffers(self.model)
        test = _evaluate(
            self.model, self.test, rt["eval_batch_size"], self.amp_dtype, self.channels_last,
            self.ctx,
        )
        record = {
            "epoch": self.epoch + 1,
            "train_loss": stats["loss"],
            "train_accuracy": stats["accuracy"],
            "test_accuracy": test["accuracy"],
            "logit_norm_mean": test["logit_norm_mean"],
            "logit_norm_std": test["logit_norm_std"],
            "lr": lr,
            "steps": steps,
        }
        if self.val is not None:
            val = _evaluate(
                self.model, self.val, rt["eval_batch_size"], self.amp_dtype, self.channels_last,
                self.ctx,
            )
            record["val_accuracy"] = val["accuracy"]
        if not math.isfinite(record["logit_norm_mean"]):
            raise self._diverged(steps, steps)
        record["seconds"] = time.perf_counter() - start
        record["train_images_per_second"] = stats["count"] / max(train_seconds, 1e-9)
        return record

    def _bar_disabled(self):
        if not self.progress or not self.ctx.is_main:
            return True
        return None  # tqdm: off when not writing to a terminal

    def update_best(self, record: Dict[str, Any]) -> None:
        if self.config["keep"] != "best_val":
            return
        value = record["val_accuracy"]
        if self.best["value"] is None or value > self.best["value"]:
            self.best = {"metric": "val_accuracy", "value": value, "epoch": record["epoch"]}
            if self.ctx.is_main:
                self.best_state = self._cpu_state()

    def fit(self, callback) -> None:
        from tqdm.auto import tqdm

        c = self.config
        bar = tqdm(
            total=c["epochs"], initial=self.epoch, desc="training", unit="epoch",
            disable=self._bar_disabled(), file=sys.stderr,
        )
        try:
            while self.epoch < c["epochs"]:
                record = self.run_epoch()
                self.epoch += 1
                self.train_seconds += record["seconds"]
                self.history.append(record)
                self.update_best(record)
                self.save_checkpoint()
                bar.update(1)
                if self.ctx.is_main:
                    bar.set_postfix(
                        loss=f"{record['train_loss']:.4f}", acc=f"{record['test_accuracy']:.4f}"
                    )
                    if self.progress:
                        msg = (
                            f"epoch {record['epoch']}/{c['epochs']}: loss "
                            f"{record['train_loss']:.4f}, train acc {record['train_accuracy']:.4f}"
                            f", test acc {record['test_accuracy']:.4f}, |z| "
                            f"{record['logit_norm_mean']:.2f}±{record['logit_norm_std']:.2f}, "
                            f"{record['seconds']:.1f}s"
                        )
                        tqdm.write(msg, file=sys.stderr)
                    if callback is not None:
                        callback(dict(record))
        finally:
            bar.close()

    # -- outputs ------------------------------------------------------------------------------

    def finish(self, wall_start: float) -> Dict[str, Any]:
        from logitnorm_plugin import provenance

        c = self.config
        if c["keep"] == "best_val" and self.best_state is not None:
            state, kept_epoch = self.best_state, int(self.best["epoch"])
        else:
            state, kept_epoch = self._cpu_state(), self.epoch
        atomic.torch_save(state, self.out / MODEL_FILE)
        digest = sha256_file(self.out / MODEL_FILE)
        by_epoch = {r["epoch"]: r for r in self.history}
        final = by_epoch[kept_epoch]["test_accuracy"]
        best = max(r["test_accuracy"] for r in self.history)
        tag = _dataset_tag(c["dataset"])
        loss_tag = c["loss"] if ":" not in c["loss"] else c["loss"].rpartition(":")[2].lower()
        t_text = f"t={c['t']:g}" if c["t"] is not None else "no temperature"
        source = None
        info = getattr(self.loss_cls, "info", None)
        paper = getattr(info, "paper", None)
        if paper is not None:
            source = getattr(paper, "url", None)
        card = {
            "key": f"{c['arch']}/{tag}/{loss_tag}/s{c['seed']}",
            "arch_class": c["arch_class"],
            "arch_kwargs": c["arch_kwargs"],
            "url": (self.out / MODEL_FILE).resolve().as_uri(),
            "sha256": digest,
            "arch": c["arch"],
            "dataset": tag,
            "loss": loss_tag,
            "seed": f"s{c['seed']}",
            "preprocessing": {
                "mean": list(self.preprocessing["mean"]),
                "std": list(self.preprocessing["std"]),
                "size": list(self.preprocessing["size"]),
            },
            "metrics": {"final_accuracy": final, "best_accuracy": best},
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
            "wall_time_s": self.train_seconds,
            "session_wall_time_s": time.perf_counter() - wall_start,
            "config": c,
            "runtime": self.runtime,
            "provenance": provenance.collect(device=self.device),
        }
        atomic.write_json(self.out / CARD_FILE, card)
        try:
            from logitnorm_plugin.plots import plot_logit_norms

            plot_logit_norms([self.out], self.out / PLOT_FILE)
        except ImportError as exc:  # matplotlib is a dependency; never lose a run over a plot
            warnings.warn(f"logit-norm plot skipped: {exc}", RuntimeWarning, stacklevel=2)
        return card


def _load_checkpoint(path: Path) -> Dict[str, Any]:
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


def _default_out(config: Dict[str, Any]) -> Path:
    loss = config["loss"].rpartition(":")[2].lower()
    name = f"{_dataset_tag(config['dataset'])}-{config['arch']}-{loss}-s{config['seed']}"
    return Path("runs") / name


def train(
    dataset: str = "digits",
    arch: str | None = None,
    loss="logitnorm",
    loss_kwargs: Dict[str, Any] | None = None,
    recipe=None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device="cpu",
    out=None,
    resume: bool = False,
    amp=None,
    compile=None,
    data_root=None,
    download: bool = False,
    t_from=None,
    deterministic: bool = False,
    progress: bool = True,
    channels_last: bool | None = None,
    arch_kwargs: Dict[str, Any] | None = None,
    eval_batch_size: int = 1024,
    check_every: int = 100,
    callback: Callable[[Dict[str, Any]], None] | None = None,
    eval_split: str = "test",
    **recipe_overrides,
) -> TrainResult:
    """Train a model with any registered loss and a named recipe.

    Values left ``None`` come from the recipe (default: ``digits`` for the digits, ``paper``
    otherwise); the resolved configuration is written to ``config.json`` in the run folder.
    The LogitNorm temperature ``t`` is taken, in this order, from ``loss_kwargs``, from
    ``t_from`` (a ``recommended_t.json`` of ``logitnorm-ood tune-t``: its ``chosen_t``) or from
    the recipe's value for the dataset; the model card records which.

    :param dataset: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or an image-folder path
    :param arch: architecture name (default: the recipe's)
    :param loss: a name of the ``pytorch_ood.losses`` group (``"logitnorm"``,
        ``"cross_entropy"``, ...) or a loss class; called as ``loss(logits, target)``
    :param loss_kwargs: constructor arguments of the loss, e.g. ``{"t": 0.04}``
    :param recipe: recipe name (see :func:`logitnorm_plugin.recipes.list_recipes`)
    :param epochs: override of the recipe's epochs
    :param batch_size: override of the recipe's (global) batch size
    :param lr: override of the recipe's initial learning rate
    :param seed: seed of initialisation, shuffling, augmentation and dropout
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; under torchrun on CUDA
        each process takes ``cuda:LOCAL_RANK``
    :param out: run folder (default ``runs/<dataset>-<arch>-<loss>-s<seed>``)
    :param resume: continue the run in ``out`` from its last complete epoch (a fresh start if
        ``out`` holds no checkpoint); without it an existing run in ``out`` is an error
    :param amp: autocast: ``True`` (bf16, fp16 where bf16 is missing), ``False``,
        ``"bf16"``, ``"fp16"``; default on for CUDA, off on CPU
    :param compile: ``torch.compile`` the forward pass: ``True``, ``False`` or a mode name;
        default on for CUDA (``reduce-overhead``: CUDA graphs on one GPU), off on CPU and in
        deterministic mode
    :param data_root: where datasets live (see :mod:`logitnorm_plugin.data`)
    :param download: fetch missing CIFAR data
    :param t_from: path of a ``recommended_t.json``; its ``chosen_t`` becomes ``t``
    :param deterministic: ``torch.use_deterministic_algorithms(True)`` for the run (bit-for-bit
        repeatable, slower on GPU)
    :param progress: tqdm bars (shown on terminals) and a summary line per epoch on stderr
    :param channels_last: ``channels_last`` memory format (default: on for CUDA only)
    :param arch_kwargs: architecture constructor overrides (e.g. ``{"drop_rate": 0.0}``)
    :param eval_batch_size: batch size of the per-epoch evaluation
    :param check_every: look for a non-finite loss every this many steps (one host
        synchronisation each) and at every epoch end; 0: epoch ends only
    :param callback: called on rank 0 with each epoch's metrics record after its checkpoint is
        written (an exception raised there stops the run; the checkpoint stays)
    :param eval_split: the split evaluated after every epoch (``test_accuracy``, the logit norm
        and the card's accuracies are measured on it): ``"test"``, or ``"val"`` for tuning runs
        that must not see the test split (needs ``train_split="train"``)
    :param recipe_overrides: other recipe fields, e.g. ``momentum=0.0``, ``milestones=(5,)``
    :return: a :class:`TrainResult` (``os.fspath`` of it is the run folder)
    :raises UnknownNameError: unknown dataset, architecture, loss or recipe
    :raises MissingDataError: dataset not on disk and ``download`` is false
    :raises ConfigMismatchError: ``resume`` into a folder whose run has another configuration
    :raises TrainingDivergedError: the loss became NaN/inf (the last good checkpoint is kept)
    """
    wall_start = time.perf_counter()
    ctx, dev = distributed.setup(device)  # raises UserError for CUDA without CUDA
    saved_flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    try:
        fast = fast_path_defaults(dev, ctx.world_size, deterministic, amp, compile,
                                  channels_last)
        config, loss_cls = resolve_config(
            dataset, arch, loss, loss_kwargs, recipe, epochs, batch_size, lr, seed, t_from,
            arch_kwargs, fast["amp_dtype"], eval_split, **recipe_overrides,
        )
        runtime = {
            "device": str(dev),
            "world_size": ctx.world_size,
            "compile_mode": fast["compile_mode"],
            "channels_last": fast["channels_last"],
            "deterministic": bool(deterministic),
            "data_root": str(data_root) if data_root is not None else None,
            "eval_batch_size": int(eval_batch_size),
            "check_every": int(check_every),
        }
        out = Path(out) if out is not None else _default_out(config)
        ckpt_path = out / CHECKPOINT_FILE
        ckpt = None
        if ckpt_path.is_file():
            if not resume:
                raise UserError(
                    f"{str(out)!r} already holds a training run; pass --resume to continue it, "
                    "or choose another --out folder"
                )
            ckpt = _load_checkpoint(ckpt_path)
            diffs = _config_differences(ckpt["config"], config)
            if diffs:
                raise ConfigMismatchError(
                    f"cannot resume in {str(out)!r}: its run was trained with another "
                    "configuration. Differing keys: " + "; ".join(diffs) + ". Use the same "
                    "arguments to resume, or another --out folder for a new run."
                )
        elif (out / CARD_FILE).is_file() and not resume:
            raise UserError(
                f"{str(out)!r} already holds a trained model; choose another --out folder"
            )

        if deterministic:
            if dev.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif dev.type == "cuda":
            torch.backends.cudnn.benchmark = True

        run = _Run(config, loss_cls, runtime, ctx, dev, out, progress)
        run.load_data(data_root, download)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic.write_json(out / CONFIG_FILE, {**config, "runtime": runtime})
        run.build()
        resumed_from = 0
        if ckpt is not None:
            run.restore(ckpt)
            resumed_from = run.epoch
            del ckpt
            if ctx.is_main and progress:
                print(f"resuming {out} after epoch {resumed_from}", file=sys.stderr)
        run.fit(callback)
        card = run.finish(wall_start) if ctx.is_main else None
        ctx.barrier()
        if card is None:
            card = read_card(out)
        return TrainResult(out, card, run.history, resumed_from)
    finally:
        torch.use_deterministic_algorithms(saved_flags[0])
        torch.backends.cudnn.benchmark = saved_flags[1]
        torch.backends.cudnn.deterministic = saved_flags[2]
        ctx.close()


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``logitnorm-ood train``."""
    parser.epilog = (
        "examples: logitnorm-ood train --dataset digits --loss cross_entropy | "
        "logitnorm-ood train --dataset cifar10 --data-root data --loss logitnorm "
        "--loss-arg t=0.04 --recipe paper --device cuda --out runs/c10-ln | "
        "torchrun --nproc_per_node 4 -m logitnorm_plugin.cli train --dataset cifar10 ..."
    )
    parser.add_argument("--dataset", default="digits",
                        help="digits (default, offline), cifar10, cifar100 or an image folder")
    parser.add_argument("--data-root", default=None, help="folder with the datasets")
    parser.add_argument("--download", action="store_true", help="download missing CIFAR data")
    parser.add_argument("--arch", default=None,
                        help="wrn-40-2, resnet18-32x32 or digits-cnn (default: the recipe's)")
    parser.add_argument("--arch-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="architecture argument, e.g. drop_rate=0.0 (repeatable)")
    parser.add_argument("--loss", default="logitnorm",
                        help="any name of the pytorch_ood.losses group (default: logitnorm)")
    parser.add_argument("--loss-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="loss constructor argument, e.g. t=0.04 (repeatable)")
    parser.add_argument("--recipe", default=None,
                        help="paper, openood or digits (default: digits for the digits, "
                        "paper otherwise)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size")
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--out", default=None,
                        help="run folder (default runs/<dataset>-<arch>-<loss>-s<seed>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last complete epoch")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA, off on CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: on for CUDA, off on CPU)")
    parser.add_argument("--t-from", default=None, metavar="JSON",
                        help="recommended_t.json of `logitnorm-ood tune-t`: use its chosen_t")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms (bit-for-bit repeatable, slower)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def cli_main(args) -> int:
    """Run ``logitnorm-ood train``."""
    result = train(
        dataset=args.dataset,
        arch=args.arch,
        arch_kwargs=parse_loss_args(args.arch_arg, "--arch-arg") or None,
        loss=args.loss,
        loss_kwargs=parse_loss_args(args.loss_arg),
        recipe=args.recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        out=args.out,
        resume=args.resume,
        amp=args.amp,
        compile=args.compile,
        data_root=args.data_root,
        download=args.download,
        t_from=args.t_from,
        deterministic=args.deterministic,
        progress=not args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        card = result.card
        print(
            f"{card['key']}: final accuracy {card['metrics']['final_accuracy']:.4f} "
            f"(best {card['metrics']['best_accuracy']:.4f}), "
            f"{card['wall_time_s']:.1f}s of training; run folder: {result.run_dir}"
        )
    return 0


class _CallableModule(types.ModuleType):
    """Importing ``logitnorm_plugin.train`` (the module) makes it the package attribute
    ``train``; calling it then still trains, so ``logitnorm_plugin.train(...)`` works whatever
    was imported first."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
