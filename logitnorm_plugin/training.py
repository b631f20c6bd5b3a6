"""Training: a :class:`~logitnorm_plugin.train_config.TrainConfig` in, a run folder out.

:func:`train` (``lp.train``; ``logitnorm-ood train`` on the command line) trains any loss of
the ``pytorch_ood.losses`` registry group on an ID dataset with a named recipe. It resolves
the configuration first (:func:`~logitnorm_plugin.train_config.resolve_config`: every name and
conflict is checked before data is read), then trains with the fast-path step of
:mod:`logitnorm_plugin.train_step` and writes the run folder described in
:mod:`logitnorm_plugin.runs`: ``config.json``, a checkpoint after every epoch (``--resume``
continues from it), ``metrics.jsonl``, ``logit_norm.png``, ``model.pt`` and the model card.

The training set sits on the device as uint8 and batches are gathered by index there, no
DataLoader; nothing in the loop waits for the device except a divergence check every
``check_every`` steps (a non-finite loss stops the run naming epoch and step; the last good
checkpoint is kept). Under ``torchrun`` the same code trains with DDP (see
:mod:`logitnorm_plugin.distributed`): the shuffled index list is sharded per rank, the batch
size is the global one, only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from torch import Tensor, nn

from logitnorm_plugin import atomic, checkpoints, distributed, locks, rng, runs
from logitnorm_plugin.errors import TrainingDivergedError, UserError
from logitnorm_plugin.train_config import default_run_dir, resolve_config
from logitnorm_plugin.train_step import (
    TrainStep,
    amp_dtype,
    amp_name,
    epoch_statistics,
    fast_path_defaults,
    lr_factor,
)

__all__ = ["train"]


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


class _Run:
    """State of one training run in one process (rank)."""

    def __init__(self, config, loss_cls, runtime, ctx, device, out: Path, progress: bool):
        self.config, self.loss_cls, self.runtime = config, loss_cls, runtime
        self.ctx, self.device, self.out, self.progress = ctx, device, out, progress
        self.amp_dtype = amp_dtype(config.amp or False, device)
        self.history: List[Dict[str, Any]] = []
        self.best = {"metric": None, "value": None, "epoch": None}
        self.best_state: Dict[str, Tensor] | None = None
        self.epoch = 0
        self.global_step = 0
        self.train_seconds = 0.0
        # False after resuming from checkpoint.prev.pt: the damaged checkpoint.pt must not
        # become the fallback of the next save
        self.keep_previous = True
        self.name = config.run_name()
        # what the per-epoch accuracy is measured on, in words (tuning runs never see "test")
        self.eval_words = "val acc" if config.get("eval_split", "test") == "val" else "test acc"

    # -- set-up -------------------------------------------------------------------------------

    def load_data(self, data_root, download: bool) -> None:
        from logitnorm_plugin.data import load_split
        from logitnorm_plugin.data.outliers import outlier_stream

        c = self.config
        # auxiliary outliers (None without): a missing set fails before the ID data is read
        self.outliers = outlier_stream(c, self.ctx.rank, self.ctx.world_size, self.device,
                                       data_root, download)
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
            self.optimizer, lr_factor(c, self.steps_per_epoch)
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
        per_rank = self.ctx.gather_objects(rng.get_rng_state(self.device, self.augment))
        if not self.ctx.is_main:
            return
        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self._cpu_state(),
            "best_model": self.best_state,
            "best": dict(self.best),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"shuffle": self.shuffle.get_state(), "per_rank": per_rank},
            "history": self.history,
            "train_seconds": self.train_seconds,
            "config": self.config.to_dict(),
            "runtime": self.runtime,
        }
        runs.save_checkpoint(self.out, state, keep_previous=self.keep_previous)
        self.keep_previous = True
        runs.write_metrics(self.out, self.history)

    def restore(self, ckpt: Dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.shuffle.set_state(ckpt["rng"]["shuffle"])
        per_rank = ckpt["rng"]["per_rank"]
        if len(per_rank) == self.ctx.world_size:
            rng.set_rng_state(per_rank[self.ctx.rank], self.device, self.augment)
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
        last = self.out / runs.CHECKPOINT_FILE
        if self.epoch > 0:
            kept = f"The last good checkpoint (epoch {self.epoch}) is kept: {last}."
        else:
            kept = "No checkpoint was written (it failed in the first epoch)."
        global_bad = self.global_step - self.step.steps + bad_step
        lr = self.config.lr * lr_factor(self.config, self.steps_per_epoch)(global_bad - 1)
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
        if self.outliers is not None:
            self.outliers.start_epoch(self.global_step, steps)
        bar = tqdm(
            total=steps, desc=f"{self.name} epoch {self.epoch + 1}/{c['epochs']}", leave=False,
            disable=self._bar_disabled(), file=sys.stderr, unit="step",
        )
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            ood = self.outliers.batch(i) if self.outliers is not None else None
            self.step(images.index_select(0, idx), labels.index_select(0, idx), ood)
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
        test = epoch_statistics(
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
            val = epoch_statistics(
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
            total=c["epochs"], initial=self.epoch, desc=self.name, unit="epoch",
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
                    if self.progress and self.progress != "bar":
                        msg = (
                            f"{self.name} epoch {record['epoch']}/{c['epochs']}: loss "
                            f"{record['train_loss']:.4f}, train acc {record['train_accuracy']:.4f}"
                            f", {self.eval_words} {record['test_accuracy']:.4f}, |z| "
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
        """Write ``model.pt``, the model card and the logit-norm plot; return the card."""
        if self.config.keep == "best_val" and self.best_state is not None:
            state, kept_epoch = self.best_state, int(self.best["epoch"])
        else:
            state, kept_epoch = self._cpu_state(), self.epoch
        paper = getattr(getattr(self.loss_cls, "info", None), "paper", None)
        card = runs.write_model(
            self.out, state, self.config.to_dict(), self.history, kept_epoch,
            preprocessing=self.preprocessing, source=getattr(paper, "url", None),
            runtime=self.runtime, wall_time_s=self.train_seconds,
            session_wall_time_s=time.perf_counter() - wall_start, device=self.device,
        )
        try:
            from logitnorm_plugin.plots import plot_logit_norms

            plot_logit_norms([self.out], self.out / runs.PLOT_FILE)
        except ImportError as exc:  # matplotlib is a dependency; never lose a run over a plot
            warnings.warn(f"logit-norm plot skipped: {exc}", RuntimeWarning, stacklevel=2)
        checkpoints.discard_previous(self.out)
        return card


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
    :param recipe: recipe name (see :func:`logitnorm_plugin.recipes.list_recipes`)
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
        :func:`logitnorm_plugin.runs.check_run_folder` and
        :func:`logitnorm_plugin.checkpoints.load_for_resume` (the fallback to
        ``checkpoint.prev.pt`` when ``checkpoint.pt`` is damaged). The run folder is locked
        while training (:mod:`logitnorm_plugin.locks`): a second training of it fails at once
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
        ``energy_regularized``, ...: see :mod:`logitnorm_plugin.outliers`): a name of
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
    if resume not in (False, True, "auto"):
        raise ValueError(f"resume must be False, True or 'auto', got {resume!r}")
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
            arch_kwargs, amp_name(fast["amp_dtype"]), eval_split, outliers=outliers,
            outlier_ratio=outlier_ratio, outlier_seed=outlier_seed, **recipe_overrides,
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
        out = Path(out) if out is not None else default_run_dir(config)
        # checked once before anything is created (a quick answer), again under the lock
        if ctx.is_main:
            locks.check_free(out, "run folder")
        runs.check_run_folder(out, config.to_dict(), resume)
        with contextlib.ExitStack() as held:
            if ctx.is_main:
                held.enter_context(locks.hold(out, timeout=0, what="run folder"))
                atomic.remove_stale_temporaries(out)
            ctx.barrier()
            return _train_in(out, config, loss_cls, runtime, ctx, dev, resume, deterministic,
                             data_root, download, progress, callback, wall_start)
    finally:
        torch.use_deterministic_algorithms(saved_flags[0])
        torch.backends.cudnn.benchmark = saved_flags[1]
        torch.backends.cudnn.deterministic = saved_flags[2]
        ctx.close()


def _say(message: str) -> None:
    print(f"logitnorm-ood: {message}", file=sys.stderr, flush=True)


def _train_in(out, config, loss_cls, runtime, ctx, dev, resume, deterministic, data_root,
              download, progress, callback, wall_start) -> runs.TrainResult:
    """The part of :func:`train` that runs while the run folder is locked."""
    runs.check_run_folder(out, config.to_dict(), resume)
    ckpt, current_ok = None, True
    if resume:
        ckpt, current_ok = checkpoints.load_for_resume(out, _say if ctx.is_main else None)
        if ckpt is not None:
            runs.check_same_config(out, runs.CHECKPOINT_FILE if current_ok
                                   else runs.PREVIOUS_CHECKPOINT_FILE,
                                   ckpt["config"], config.to_dict())

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
        runs.write_config(out, config.to_dict(), runtime)
    run.build()
    resumed_from = 0
    if ckpt is not None:
        run.restore(ckpt)
        run.keep_previous = current_ok
        resumed_from = run.epoch
        del ckpt
        if ctx.is_main and progress:
            print(f"resuming {out} after epoch {resumed_from}", file=sys.stderr)
    run.fit(callback)
    card = run.finish(wall_start) if ctx.is_main else None
    ctx.barrier()
    if card is None:
        card = runs.read_card(out)
    return runs.TrainResult(out, card, run.history, resumed_from)
