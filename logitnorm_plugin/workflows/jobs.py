"""The jobs of a bench plan: what runs in a worker process or a Slurm task.

A job is a picklable callable (submitit pickles it into the task's folder; the local pool sends
it to a spawned worker). It records where it ran in a small status file before it starts (the
driver names that node when the job fails), sets torch's CPU threads to the driver's, and
writes only into its own files: a training job into its run folder (the trainer's atomic
checkpoints and card), an evaluation job into its own shard store, renamed into place when
complete (:mod:`logitnorm_plugin.workflows.shards`). A job that is killed midway leaves no
half-written result, only a temporary file that the next merge removes.

:class:`TrainJob` is submitit-checkpointable: on preemption or time-out Slurm requeues it and
the new task resumes the run folder from its last checkpoint (the trainer's ``resume="auto"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from logitnorm_plugin._core import provenance
from logitnorm_plugin._core.atomic import temporary_path, write_json
from logitnorm_plugin._core.device import resolve_device, resolve_threads
from logitnorm_plugin._core.errors import TrainingDivergedError, UserError
from logitnorm_plugin.evaluation.engine import evaluate
from logitnorm_plugin.evaluation.specs import resolve_model
from logitnorm_plugin.training.loop import run_training
from logitnorm_plugin.training.request import TrainRequest
from logitnorm_plugin.training.runs import CARD_FILE

__all__ = ["EvaluateJob", "Job", "TrainCallJob", "TrainJob", "job_status", "log_tail"]

#: the lines of a failed job's log shown by the driver
TAIL_LINES = 8


@dataclass(frozen=True)
class Job:
    """What every job has: a name for people, a file name, where it records its status, the
    device and torch CPU threads it asks for (as bench was given them)."""

    name: str
    slug: str
    status_dir: str
    device: str = "cpu"
    threads: int | str | None = None  # bench's --threads, resolved where the job runs
    dataset: str | None = None  # the benchmark's name (``--threads auto`` depends on it)
    log: str | None = field(default=None, compare=False)
    after: str | None = None  # the slug of the job this one waits for

    def __call__(self) -> dict:
        with _logging_to(self.log):
            status = {"job": self.name, "node": socket.gethostname(), "pid": os.getpid(),
                      "started": time.time(), "slurm_job_id": _slurm_job_id()}
            write_json(Path(self.status_dir) / f"{self.slug}.json", status)
            # resolved here, where the job runs: ``auto`` is the node's GPU, if it has one
            device = str(resolve_device(self.device))
            threads = resolve_threads(self.threads, device, self.dataset)
            if threads is not None:
                torch.set_num_threads(threads)
            start = time.perf_counter()
            result = self.work(device)
            return {**status, **(result or {}), "seconds": time.perf_counter() - start}

    def work(self, device: str) -> dict | None:  # pragma: no cover - every job overrides it
        raise NotImplementedError

    def on_device(self, device: str) -> Job:
        """The same job asking for another device (a pinned local worker sees its GPU as
        ``cuda``)."""
        return replace(self, device=device)

    def logged_to(self, path: str) -> Job:
        return replace(self, log=path)


@dataclass(frozen=True)
class TrainJob(Job):
    """Train one model of a bench into its run folder (or resume it there)."""

    #: bench's _TrainRequest: run folder, TrainRequest, request record and the configuration
    #: bench checked up front (the training reuses it, here or in another process)
    request: Any = None

    def work(self, device: str) -> dict:
        trained = self.request.ensure_trained(device=device)
        return {"trained": trained, "run_dir": str(self.request.run_dir)}

    def checkpoint(self, *args, **kwargs):
        """submitit's preemption / time-out hook: requeue this job; the new task resumes the
        run folder from its last checkpoint (``resume="auto"``)."""
        import submitit  # only ever called inside a submitit task

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass(frozen=True)
class TrainCallJob(Job):
    """One training of a whole :class:`~logitnorm_plugin.training.request.TrainRequest` (a grid
    point of ``tune-t``); a run that diverges is a result (its error recorded), not a failed
    job."""

    request: TrainRequest | None = None

    def work(self, device: str) -> dict:
        try:
            folder = run_training(replace(self.request, device=device))
        except TrainingDivergedError as exc:
            return {"diverged": str(exc)}
        return {"run_dir": os.fspath(folder)}

    checkpoint = TrainJob.checkpoint


@dataclass(frozen=True)
class EvaluationRequest:
    """What an evaluation job evaluates one model with (the bench's evaluation settings)."""

    benchmark: str
    detectors: tuple
    batch_size: int
    protocol: str
    num_workers: int
    data_root: str | None
    download: bool
    cache_dir: str
    command: str | None


@dataclass(frozen=True)
class EvaluateJob(Job):
    """Evaluate one model (every detector and OOD set, one forward pass per dataset, the
    model's fit cache) into its own shard store, renamed into place when complete."""

    model: str = ""  # a trained run folder
    label: str = ""
    loss: str | None = None
    seed: int | None = None
    keep_scores: bool = False
    shard: str = ""
    settings: EvaluationRequest | None = None

    def work(self, device: str) -> dict:
        s = self.settings
        if not (Path(self.model) / CARD_FILE).is_file():
            raise UserError(f"{self.label}: {self.model} holds no trained model (its training "
                            "job did not finish)")
        spec = resolve_model(self.model)
        spec.label, spec.loss, spec.seed = self.label, self.loss, self.seed
        shard = Path(self.shard)
        shard.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(shard)
        record = provenance.collect(device=device, config={
            "command": s.command, "benchmark": s.benchmark, "protocol": s.protocol,
            "job": self.name, "node": socket.gethostname(), "shard": shard.name,
            "batch_size": s.batch_size,
        })
        try:
            rows = evaluate([spec], s.benchmark, detectors=list(s.detectors), device=device,
                            batch_size=s.batch_size, store=tmp, progress=False,
                            protocol=s.protocol, keep_scores=self.keep_scores,
                            num_workers=s.num_workers, provenance=record,
                            cache_dir=s.cache_dir, data_root=s.data_root, download=s.download)
            os.replace(tmp, shard)
        finally:
            for leftover in (tmp, Path(f"{tmp}-journal")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        return {"cells": len(rows), "shard": str(shard)}


def job_status(status_dir, slug: str) -> dict | None:
    """What a job recorded when it started (node, pid, Slurm job id), or ``None``."""
    try:
        return json.loads((Path(status_dir) / f"{slug}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def log_tail(path, lines: int = TAIL_LINES) -> list[str]:
    """The last non-empty ``lines`` lines of a log file (none if it is missing)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _slurm_job_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


@contextlib.contextmanager
def _logging_to(path):
    """Send this process's stdout and stderr (Python's and native code's) to ``path`` while a
    local-pool job runs; Slurm tasks already log to submitit's files (``path`` is ``None``)."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
