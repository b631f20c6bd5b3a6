"""One training run in progress: its data on the device, model, optimiser and step, its epochs,
checkpoints and the files it finishes with.

:func:`logitnorm_plugin.training.loop.train` resolves and checks the configuration, locks the
run folder and drives a :class:`TrainingSession` through ``load_data``, ``build``, ``restore``
(when resuming), ``fit`` and ``finish``.
"""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from logitnorm_plugin._core import rng
from logitnorm_plugin._core.errors import TrainingDivergedError, UserError
from logitnorm_plugin.data import OpenedDataset
from logitnorm_plugin.data.outliers import outlier_stream
from logitnorm_plugin.plots import plot_logit_norms, run_label
from logitnorm_plugin.registry.architectures import build_arch_within
from logitnorm_plugin.registry.split import build_loss
from logitnorm_plugin.training import checkpoints, distributed, runs
from logitnorm_plugin.training.augment import DeviceAugment
from logitnorm_plugin.training.step import (
    TrainStep,
    amp_dtype,
    epoch_statistics,
    lr_factor,
)

__all__ = ["TrainingSession"]


class TrainingSession:
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
        self.eval_words = "val acc" if config.eval_split == "val" else "test acc"

    # -- set-up -------------------------------------------------------------------------------

    def load_data(self, dataset: OpenedDataset, data_root, download: bool) -> None:
        """Read the splits the run uses from ``dataset`` (opened with the configuration)."""

        c = self.config
        # auxiliary outliers (None without): a missing set fails before the ID data is read
        self.outliers = outlier_stream(c, self.ctx.rank, self.ctx.world_size, self.device,
                                       data_root, download)
        # every rank reads (the files are shared); only the tensors on this device are used
        train = dataset.split(c.train_split, data_root, download, c.split_seed)
        # the per-epoch evaluation set ("test" unless a tuning run keeps the test split unseen)
        test = dataset.split(c.eval_split, data_root, download, c.split_seed)
        val = None
        if c.keep == "best_val":
            val = dataset.split("val", data_root, download, c.split_seed)
        labels = train.labels
        if len(labels) == 0:
            raise UserError(f"dataset {c.dataset!r} has no training images")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= c.num_classes:
            raise UserError(
                f"training labels of {c.dataset!r} span {lo}..{hi}, expected "
                f"0..{c.num_classes - 1}"
            )
        world = self.ctx.world_size
        if c.batch_size % world:
            raise UserError(
                f"batch size {c.batch_size} (global) is not divisible by the {world} processes"
            )
        self.local_batch = c.batch_size // world
        per_rank = math.ceil(len(train) / world)
        if c.drop_last and per_rank < self.local_batch:
            raise UserError(
                f"batch size {c.batch_size} is larger than the {len(train)} training images "
                "with drop_last: no step would run"
            )
        if c.drop_last:
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

        c, rt = self.config, self.runtime
        torch.manual_seed(c.seed)
        np.random.seed(c.seed)
        random.seed(c.seed)
        # checked on the meta device first: arch_kwargs may come from a config.json that
        # someone else wrote (--resume), and must not choose how much memory is allocated
        self.model = build_arch_within(
            c.arch_class, c.arch_kwargs, _training_budget(self.device)
        ).to(self.device)
        if self.ctx.rank > 0:
            # same initial weights everywhere (same seed), but each rank its own dropout masks
            torch.manual_seed(c.seed * 1009 + 7919 * self.ctx.rank)
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
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            nesterov=c.nesterov,
            **extra,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(c.to_dict(), self.steps_per_epoch)
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        # shuffling on the CPU: the same permutation on every rank and every device type
        self.shuffle = torch.Generator()
        self.shuffle.manual_seed(c.seed)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.augment = DeviceAugment(
            c.crop_padding, c.flip, self.device,
            seed=c.seed * 1009 + 17 + self.ctx.rank, memory_format=fmt,
        )
        # the unwrapped model: a loss that declares model parts binds them (split.build_loss)
        self.loss_fn = build_loss(self.loss_cls, self.model, **c.loss_kwargs)
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
            s = self.config.seed * 100003 + ckpt["epoch"] * 101 + self.ctx.rank
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
        factor = lr_factor(self.config.to_dict(), self.steps_per_epoch)
        lr = self.config.lr * factor(global_bad - 1)
        return TrainingDivergedError(
            f"training diverged: the loss became NaN or infinite at epoch {self.epoch + 1}, "
            f"step {bad_step} of {steps} (global step {global_bad}, "
            f"lr {lr:.4g}). {kept} Lower the learning rate or check the loss arguments "
            f"(loss '{self.config.loss}', {self.config.loss_kwargs}) and train into a "
            "new --out folder."
        )

    def run_epoch(self) -> Dict[str, Any]:
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
            total=steps, desc=f"{self.name} epoch {self.epoch + 1}/{c.epochs}", leave=False,
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
        if self.config.keep != "best_val":
            return
        value = record["val_accuracy"]
        if self.best["value"] is None or value > self.best["value"]:
            self.best = {"metric": "val_accuracy", "value": value, "epoch": record["epoch"]}
            if self.ctx.is_main:
                self.best_state = self._cpu_state()

    def fit(self, callback) -> None:
        c = self.config
        bar = tqdm(
            total=c.epochs, initial=self.epoch, desc=self.name, unit="epoch",
            disable=self._bar_disabled(), file=sys.stderr,
        )
        try:
            while self.epoch < c.epochs:
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
                            f"{self.name} epoch {record['epoch']}/{c.epochs}: loss "
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
        export = getattr(self.loss_fn, "export_state", None)
        if callable(export):  # an objective that changes the network (T2FNorm) says how
            state = export(self.model, state)  # the trained weights become the test-time one
        paper = getattr(getattr(self.loss_cls, "info", None), "paper", None)
        card = runs.write_model(
            self.out, state, self.config.to_dict(), self.history, kept_epoch,
            preprocessing=self.preprocessing, source=getattr(paper, "url", None),
            runtime=self.runtime, wall_time_s=self.train_seconds,
            session_wall_time_s=time.perf_counter() - wall_start, device=self.device,
        )
        config = self.config.to_dict()
        try:
            plot_logit_norms([self.history], self.out / runs.PLOT_FILE,
                             labels=[run_label(config)],
                             title=f"Logit norm during training ({config['dataset']})")
        except ImportError as exc:  # matplotlib is a dependency; never lose a run over a plot
            warnings.warn(f"logit-norm plot skipped: {exc}", RuntimeWarning, stacklevel=2)
        checkpoints.discard_previous(self.out)
        return card


def _training_budget(device: torch.device) -> int | None:
    """The most bytes a network's parameters may take on ``device`` for training: a third of
    its free memory (weights, gradients and momentum each take that much); ``None`` where
    the free memory is unknown."""
    try:
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
        else:
            free = _available_host_memory()
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
    return None if free is None else int(free) // 3


def _available_host_memory() -> int | None:
    """Linux's ``MemAvailable`` (free memory plus the page cache it can drop): the free pages
    alone would refuse ordinary networks on a machine whose memory holds cached files."""
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None
