"""Training: a :class:`~logitnorm_plugin.training.request.TrainRequest` in, a run folder out.

:func:`train` (``lp.train``; ``logitnorm-ood train`` on the command line) trains any loss of
the ``pytorch_ood.losses`` registry group on an ID dataset with a named recipe. Its keyword
arguments (or the command line) become one
:class:`~logitnorm_plugin.training.request.TrainRequest`, which :func:`run_training` takes
whole. It resolves the configuration first
(:func:`~logitnorm_plugin.training.config.configure`: every name and conflict is checked
before data is read, the dataset name is resolved once), then trains with the fast-path step of
:mod:`logitnorm_plugin.training.step` and writes the run folder described in
:mod:`logitnorm_plugin.training.runs`: ``config.json``, a checkpoint after every epoch
(``--resume``
continues from it), ``metrics.jsonl``, ``logit_norm.png``, ``model.pt`` and the model card.

The training set sits on the device as uint8 and batches are gathered by index there, no
DataLoader; nothing in the loop waits for the device except a divergence check every
``check_every`` steps (a non-finite loss stops the run naming epoch and step; the last good
checkpoint is kept). Under ``torchrun`` the same code trains with DDP (see
:mod:`logitnorm_plugin.training.distributed`): the shuffled index list is sharded per rank, the
batch size is the global one, only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from tqdm.auto import tqdm

from logitnorm_plugin._core import atomic, locks
from logitnorm_plugin._core.arg_checks import out_path
from logitnorm_plugin.data import OpenedDataset
from logitnorm_plugin.training import checkpoints, distributed, runs
from logitnorm_plugin.training.config import Configured, configure, default_run_dir
from logitnorm_plugin.training.request import TrainRequest
from logitnorm_plugin.training.session import TrainingSession
from logitnorm_plugin.training.step import (
    amp_name,
    fast_path_defaults,
)

__all__ = ["run_training", "train"]

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def train(
    dataset: str = "digits",
    arch: str | None = None,
    loss="logitnorm",
    *,
    loss_kwargs: Dict[str, Any] | None = None,
    recipe=None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device="cpu",
    out=None,
    resume: bool | str = False,
    amp=None,
    compile=None,
    data_root=None,
    download: bool = False,
    t_from=None,
    deterministic: bool = False,
    progress: bool | str = True,
    channels_last: bool | None = None,
    arch_kwargs: Dict[str, Any] | None = None,
    eval_batch_size: int = 1024,
    check_every: int = 100,
    callback: Callable[[Dict[str, Any]], None] | None = None,
    eval_split: str = "test",
    outliers=None,
    outlier_ratio: float | None = None,
    outlier_seed: int | None = None,
    **recipe_overrides,
) -> runs.TrainResult:
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
    :param recipe: recipe name (see :func:`logitnorm_plugin.training.recipes.list_recipes`)
    :param epochs: override of the recipe's epochs
    :param batch_size: override of the recipe's (global) batch size
    :param lr: override of the recipe's initial learning rate
    :param seed: seed of initialisation, shuffling, augmentation and dropout
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; under torchrun on CUDA
        each process takes ``cuda:LOCAL_RANK``
    :param out: run folder (default ``runs/<dataset>-<arch>-<loss>-s<seed>``)
    :param resume: ``False``: start a new run; ``out`` must hold no run file (config,
        card, weights, metrics, checkpoint). ``True`` (``--resume``): continue the run in
        ``out`` from its last intact checkpoint (from epoch 0 if it was stopped before its
        first one); ``out`` must hold a run, and every configuration recorded there must equal
        this one. ``"auto"``: continue if ``out`` holds a run of this configuration, else
        start one (what ``bench`` and ``tune-t`` use for the run folders they own). See
        :func:`logitnorm_plugin.training.runs.check_run_folder` and
        :func:`logitnorm_plugin.training.checkpoints.load_for_resume` (the fallback to
        ``checkpoint.prev.pt`` when ``checkpoint.pt`` is damaged). The run folder is locked
        while training (:mod:`logitnorm_plugin._core.locks`): a second training of it fails at once
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
    :param progress: tqdm bars (shown on terminals) and a summary line per epoch on stderr;
        ``"bar"``: the bars only
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
    :param outliers: auxiliary outliers for an objective that needs them (``outlier_exposure``,
        ``energy_regularized``, ...: see :mod:`logitnorm_plugin.objectives`): a name of
        :data:`~logitnorm_plugin.data.outliers.OUTLIER_SOURCES` or an image folder; each
        step adds ``outlier_ratio`` outliers per ID image, labelled ``-1``
    :param outlier_ratio: outliers per ID image (default: the objective's published ratio)
    :param outlier_seed: seed of the outlier source and of its stream (default: ``seed``)
    :param recipe_overrides: other recipe fields, e.g. ``momentum=0.0``, ``milestones=(5,)``
    :return: a :class:`TrainResult` (``os.fspath`` of it is the run folder)
    :raises UnknownNameError: unknown dataset, architecture, loss, recipe or outlier source
    :raises UserError: an objective that needs outliers without ``outliers``, or one that
        takes none with them (before any data is read)
    :raises MissingDataError: dataset (or outlier set) not on disk and ``download`` is false
    :raises ConfigMismatchError: ``resume`` into a folder whose run has another configuration
    :raises FolderBusyError: another process trains into ``out``
    :raises ModelIntegrityError: no intact checkpoint to resume from
    :raises TrainingDivergedError: the loss became NaN/inf (the last good checkpoint is kept)
    """
    request = TrainRequest(
        dataset=dataset, arch=arch, loss=loss, loss_kwargs=loss_kwargs, recipe=recipe,
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, out=out,
        resume=resume, amp=amp, compile=compile, data_root=data_root, download=download,
        t_from=t_from, deterministic=deterministic, progress=progress,
        channels_last=channels_last, arch_kwargs=arch_kwargs, eval_batch_size=eval_batch_size,
        check_every=check_every, callback=callback, eval_split=eval_split, outliers=outliers,
        outlier_ratio=outlier_ratio, outlier_seed=outlier_seed, overrides=recipe_overrides,
    )
    return run_training(request)


def run_training(request: TrainRequest, configured: Configured | None = None
                 ) -> runs.TrainResult:
    """What :func:`train` does, for a request built once (by ``logitnorm-ood train``, or by
    :func:`train` from its keyword arguments): see there.

    :param configured: what :func:`~logitnorm_plugin.training.config.configure` returned for
        this ``request`` where the caller checked it already (``bench`` does, before anything
        trains): the run takes it as it is (its autocast entry set to this device's) instead
        of configuring the request again; ``None``: configured here
    """
    wall_start = time.perf_counter()
    ctx, dev = distributed.setup(request.device)  # raises UserError for CUDA without CUDA
    saved_flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    try:
        fast = fast_path_defaults(dev, ctx.world_size, request.deterministic, request.amp,
                                  request.compile, request.channels_last)
        amp = amp_name(fast["amp_dtype"])
        if configured is None:
            config, loss_cls, dataset = configure(request, amp=amp)
        else:  # checked by the caller: the names are not read and resolved again
            config, loss_cls, dataset = configured
            if config.amp != amp:  # the only entry that depends on where the run goes
                config = dataclasses.replace(config, amp=amp)
        runtime = {
            "device": str(dev),
            "world_size": ctx.world_size,
            "compile_mode": fast["compile_mode"],
            "channels_last": fast["channels_last"],
            "deterministic": bool(request.deterministic),
            "data_root": str(request.data_root) if request.data_root is not None else None,
            "eval_batch_size": int(request.eval_batch_size),
            "check_every": int(request.check_every),
        }
        out = out_path(request.out) if request.out is not None else default_run_dir(config)
        # checked once before anything is created (a quick answer), again under the lock
        if ctx.is_main:
            locks.check_free(out, "run folder")
        runs.check_run_folder(out, config.to_dict(), request.resume)
        with contextlib.ExitStack() as held:
            if ctx.is_main:
                held.enter_context(locks.hold(out, timeout=0, what="run folder"))
                atomic.remove_stale_temporaries(out)
            ctx.barrier()
            return _train_in(request, out, config, loss_cls, dataset, runtime, ctx, dev,
                             wall_start)
    finally:
        torch.use_deterministic_algorithms(saved_flags[0])
        torch.backends.cudnn.benchmark = saved_flags[1]
        torch.backends.cudnn.deterministic = saved_flags[2]
        ctx.close()


def _say(message: str) -> None:
    _log.warning(message)


def _train_in(request: TrainRequest, out: Path, config, loss_cls, dataset: OpenedDataset,
              runtime, ctx, dev, wall_start) -> runs.TrainResult:
    """The part of :func:`train` that runs while the run folder ``out`` is locked (the
    dataset resolved with the configuration: its splits are read from it)."""
    resume, progress = request.resume, request.progress
    runs.check_run_folder(out, config.to_dict(), resume)
    ckpt, current_ok = None, True
    if resume:
        ckpt, current_ok = checkpoints.load_for_resume(out, _say if ctx.is_main else None)
        if ckpt is not None:
            runs.check_same_config(out, runs.CHECKPOINT_FILE if current_ok
                                   else runs.PREVIOUS_CHECKPOINT_FILE,
                                   ckpt["config"], config.to_dict())

    if request.deterministic:
        if dev.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    run = TrainingSession(config, loss_cls, runtime, ctx, dev, out, progress)
    run.load_data(dataset, request.data_root, request.download)
    if ctx.is_main:
        runs.write_config(out, config.to_dict(), runtime)
    run.build()
    resumed_from = 0
    if ckpt is not None:
        run.restore(ckpt)
        run.keep_previous = current_ok
        resumed_from = run.epoch
        del ckpt
        if ctx.is_main and progress:
            tqdm.write(f"resuming {out} after epoch {resumed_from}", file=sys.stderr)
    run.fit(request.callback)
    card = run.finish(wall_start) if ctx.is_main else None
    ctx.barrier()
    if card is None:
        card = runs.read_card(out)
    return runs.TrainResult(out, card, run.history, resumed_from)
