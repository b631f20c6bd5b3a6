"""Where the jobs of a bench plan run: a local process pool, or Slurm through submitit.

``inline`` (the default) is not here: ``bench`` then trains and evaluates in its own process
exactly as it always did. The others take a :class:`~logitnorm_plugin.workflows.plan.Plan`
(training jobs, evaluation jobs that wait for their model's training) and return one
:class:`Outcome` per job:

- :class:`LocalPool` (``--executor local``): a ``concurrent.futures`` process pool (spawned
  workers). With CUDA devices each worker is pinned to one GPU through
  ``CUDA_VISIBLE_DEVICES`` and ``--jobs-per-gpu K`` puts K workers on each; an evaluation job
  starts as soon as its model's training job has finished. Each job logs to
  ``<out>/workflow/logs/<job>.log``.
- :class:`SlurmArrays` (``--executor slurm``): submitit's ``AutoExecutor`` (Slurm forced), one
  job array for the training jobs and one for the evaluation jobs, which starts after the
  first (``afterany``: an evaluation job whose model did not train fails, saying so). Its
  parameters are ``update_parameters``' (``--slurm-arg KEY=VALUE`` passes any key through);
  logs in ``<out>/workflow/slurm/``. The driver waits, printing one line per finished job; with
  ``--no-wait`` it records the submission for ``logitnorm-ood gather``.

submitit is an optional dependency (``pip install "logitnorm-plugin[cluster]"``), imported
only here and only when Slurm is asked for.
"""

from __future__ import annotations

import concurrent.futures as cf
import difflib
import multiprocessing
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from logitnorm_plugin._core.errors import UnknownNameError, UserError, one_line
from logitnorm_plugin.workflows.jobs import Job, job_status, log_tail

__all__ = ["EXECUTORS", "ExecutorSpec", "LocalPool", "Outcome", "SlurmArrays", "import_submitit"]

#: the names ``--executor`` takes
EXECUTORS = ("inline", "local", "slurm")

#: seconds between two looks at the Slurm queue while waiting
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class ExecutorSpec:
    """The ``--executor`` options of one bench.

    :param name: ``inline``, ``local`` or ``slurm``
    :param workers: local pool size (default: GPUs x ``jobs_per_gpu``, or the CPU count)
    :param jobs_per_gpu: local workers pinned to each GPU
    :param wait: wait for the Slurm jobs (``False``: submit, record, return; ``gather`` ends)
    :param slurm: ``(key, value)`` pairs for submitit's ``update_parameters``
    """

    name: str = "inline"
    workers: int | None = None
    jobs_per_gpu: int = 1
    wait: bool = True
    slurm: tuple = ()
    gather: bool = False  # wait for a recorded --no-wait submission (``logitnorm-ood gather``)

    def __post_init__(self):
        if self.name not in EXECUTORS:
            close = difflib.get_close_matches(self.name, EXECUTORS, n=1)
            raise UnknownNameError("executor", self.name, EXECUTORS, close[0] if close else None)
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.jobs_per_gpu < 1:
            raise UserError(f"--jobs-per-gpu must be >= 1, got {self.jobs_per_gpu}")
        if self.name != "local" and (self.workers is not None or self.jobs_per_gpu != 1):
            raise UserError("--workers and --jobs-per-gpu go with --executor local")
        if self.name != "slurm" and (self.slurm or not self.wait):
            raise UserError("--slurm-* options and --no-wait go with --executor slurm")

    def to_json(self) -> dict:
        return {"name": self.name, "workers": self.workers, "jobs_per_gpu": self.jobs_per_gpu,
                "wait": self.wait, "slurm": [list(p) for p in self.slurm]}


@dataclass
class Outcome:
    """How one job ended."""

    job: Job
    ok: bool
    state: str = "COMPLETED"
    error: str = ""
    node: str | None = None
    log: str | None = None
    tail: list = field(default_factory=list)
    job_id: str | None = None
    result: dict | None = None


def import_submitit():
    """submitit, or a one-line error naming the extra that installs it."""
    try:
        import submitit  # an optional dependency (the cluster extra): imported when asked for
    except ImportError as exc:
        raise UserError('--executor slurm needs submitit: pip install '
                        '"logitnorm-plugin[cluster]"') from exc
    return submitit


def _say(progress: bool, text: str, who: str = "bench") -> None:
    """A progress line per finished job (tqdm's channel: it does not break a bar)."""
    if progress:
        tqdm.write(f"{who}: {text}", file=sys.stderr)


def _finished_line(outcome: Outcome, done: int, total: int) -> str:
    where = f" on {outcome.node}" if outcome.node else ""
    seconds = (outcome.result or {}).get("seconds")
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    return f"[{done}/{total}] {outcome.job.name}: {outcome.state}{where}{took}"


# -- the local pool ----------------------------------------------------------------------------


def _pin(counter, gpus: int, per_gpu: int) -> None:
    """Worker initializer: take the next worker slot and see only its GPU."""
    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str((slot // per_gpu) % gpus)


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class LocalPool:
    """A process pool on this machine (``--executor local``)."""

    def __init__(self, spec: ExecutorSpec, folder: Path, progress: bool = True, name="bench"):
        self.name = name
        self.gpus = _cuda_devices()
        self.per_gpu = spec.jobs_per_gpu
        default = self.gpus * self.per_gpu if self.gpus else (os.cpu_count() or 1)
        self.workers = spec.workers or default
        self.folder, self.progress = Path(folder), progress

    def _say(self, text: str) -> None:
        _say(self.progress, text, self.name)

    def _prepare(self, job: Job) -> Job:
        if self.gpus and job.device.startswith("cuda"):
            job = job.on_device("cuda")  # the pinned GPU is the worker's only one
        elif self.gpus and job.device == "auto":
            job = job.on_device("cuda")
        return job.logged_to(str(self.folder / "logs" / f"{job.slug}.log"))

    def run(self, plan) -> list[Outcome]:
        context = multiprocessing.get_context("spawn")
        counter = context.Value("i", 0)
        waiting = {}  # training slug -> its evaluation jobs
        for job in plan.evaluations:
            waiting.setdefault(job.after, []).append(job)
        outcomes, total = [], len(plan.trainings) + len(plan.evaluations)
        self._say(f"{total} jobs on a local pool of {self.workers} workers"
                  + (f" ({self.per_gpu} per GPU, {self.gpus} GPUs)" if self.gpus else "")
                  + f"; logs in {self.folder / 'logs'}")
        with cf.ProcessPoolExecutor(self.workers, mp_context=context, initializer=_pin,
                                    initargs=(counter, self.gpus, self.per_gpu)) as pool:
            running = {}

            def start(job):
                job = self._prepare(job)
                try:
                    running[pool.submit(job)] = job
                except cf.process.BrokenProcessPool:
                    outcomes.append(Outcome(job, False, "NOT RUN", "the local pool broke (a "
                                            "worker process died)"))

            for job in [*plan.trainings, *waiting.pop(None, [])]:
                start(job)
            while running:
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    outcome = self._outcome(job, future)
                    outcomes.append(outcome)
                    self._say(_finished_line(outcome, len(outcomes), total))
                    for follower in waiting.pop(job.slug, []):
                        if outcome.ok:
                            start(follower)
                        else:
                            outcomes.append(Outcome(follower, False, "NOT RUN",
                                                    f"its training job failed ({job.name})"))
        return outcomes

    def _outcome(self, job: Job, future) -> Outcome:
        status = job_status(job.status_dir, job.slug) or {}
        node = status.get("node") or socket.gethostname()
        try:
            result = future.result()
        except cf.process.BrokenProcessPool as exc:
            return Outcome(job, False, "KILLED", f"its worker process died ({exc})", node,
                           job.log, log_tail(job.log))
        except BaseException as exc:  # the job's own error, reported per job
            return Outcome(job, False, "FAILED", one_line(f"{type(exc).__name__}: {exc}", 300),
                           node, job.log, log_tail(job.log))
        return Outcome(job, True, "COMPLETED", node=node, log=job.log, result=result)


# -- Slurm through submitit --------------------------------------------------------------------


class SlurmArrays:
    """Job arrays on Slurm through submitit (``--executor slurm``)."""

    def __init__(self, spec: ExecutorSpec, folder: Path, progress: bool = True, name="bench"):
        self.submitit = import_submitit()
        if shutil.which("sbatch") is None:
            raise UserError("--executor slurm: sbatch is not on PATH (run it on a Slurm login "
                            "node, or use --executor local)")
        self.spec, self.folder, self.progress, self.name = spec, Path(folder), progress, name

    def _say(self, text: str) -> None:
        _say(self.progress, text, self.name)

    def _executor(self, dependency: str | None = None):
        executor = self.submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        params = {"name": self.name, "timeout_min": 60, **dict(self.spec.slurm)}
        extra = dict(params.pop("slurm_additional_parameters", None) or {})
        if dependency:
            extra["dependency"] = dependency
            extra.setdefault("kill_on_invalid_dep", "yes")
        if extra:
            params["slurm_additional_parameters"] = extra
        try:
            executor.update_parameters(**params)
        except (ValueError, NameError, TypeError) as exc:
            raise UserError(f"--slurm-arg: {one_line(str(exc), 400)}") from exc
        return executor

    def submit(self, plan) -> list[tuple[Job, str]]:
        """Submit the plan's arrays; ``(job, Slurm job id)`` pairs."""
        submitted = []
        dependency = None
        if plan.trainings:
            jobs = self._executor().submit_array(list(plan.trainings))
            submitted += list(zip(plan.trainings, (j.job_id for j in jobs)))
            dependency = f"afterany:{jobs[0].job_id.split('_')[0]}"
        if plan.evaluations:
            jobs = self._executor(dependency).submit_array(list(plan.evaluations))
            submitted += list(zip(plan.evaluations, (j.job_id for j in jobs)))
        arrays = sorted({job_id.split("_")[0] for _, job_id in submitted})
        self._say(f"submitted {len(plan.trainings)} training and "
                  f"{len(plan.evaluations)} evaluation jobs to Slurm (job arrays "
                  f"{', '.join(arrays)}); logs in {self.folder}")
        return submitted

    def run(self, plan) -> list[Outcome]:
        return self.wait(self.submit(plan))

    def wait(self, submitted: list[tuple[Job, str]]) -> list[Outcome]:
        """Wait for submitted jobs, one line per finished job; one outcome each."""
        pending = list(submitted)
        outcomes, total = [], len(submitted)
        while pending:
            queued = _queued({job_id.split("_")[0] for _, job_id in pending})
            for job, job_id in list(pending):
                outcome = self._outcome(job, job_id, job_id in queued)
                if outcome is None:
                    continue
                pending.remove((job, job_id))
                outcomes.append(outcome)
                self._say(_finished_line(outcome, len(outcomes), total))
            if pending:
                time.sleep(POLL_SECONDS)
        return outcomes

    def _outcome(self, job: Job, job_id: str, queued: bool) -> Outcome | None:
        """How ``job`` ended, or ``None`` while it runs. Read from submitit's result file and
        Slurm's own records (``scontrol``), not from ``sacct``: clusters without accounting
        have none."""
        paths = self.submitit.core.utils.JobPaths(self.folder, job_id=job_id, task_id=0)
        status = job_status(job.status_dir, job.slug) or {}
        node = status.get("node")
        log = str(paths.stderr)
        if paths.result_pickle.exists():
            kind, value = _read_result(paths.result_pickle)
            if kind == "success":
                return Outcome(job, True, "COMPLETED", node=node, log=log, job_id=job_id,
                               result=value)
            last = [line for line in str(value).splitlines() if line.strip()]
            return Outcome(job, False, "FAILED", one_line(last[-1] if last else "", 300), node,
                           log, log_tail(log), job_id)
        if queued:
            return None
        state, slurm_node = _final_state(job_id)
        if state in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING"):
            return None
        if paths.result_pickle.exists():  # written just before the task left the queue
            return self._outcome(job, job_id, queued)
        if state is None and not status:
            # Slurm drops a pending array task that is cancelled (scancel, or a dependency
            # that can never be met) at once, without a record: it never started
            return Outcome(job, False, "CANCELLED", f"Slurm job {job_id} left the queue "
                           "before it started (cancelled)", None, None, [], job_id)
        return Outcome(job, False, state or "ENDED", f"Slurm job {job_id} ended without a "
                       f"result ({state or 'no longer known to Slurm'})", node or slurm_node,
                       log, log_tail(log), job_id)


def _read_result(path: Path):
    for attempt in range(3):
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except (EOFError, pickle.UnpicklingError):
            if attempt == 2:
                raise
            time.sleep(1)


def _queued(arrays: set) -> set:
    """Slurm ids (``ARRAY_TASK``) of the tasks of ``arrays`` still in the queue."""
    if not arrays:
        return set()
    done = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(sorted(arrays))],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        # squeue forgets finished jobs and then fails for their ids: none of them is queued
        return set()
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def _final_state(job_id: str) -> tuple[str | None, str | None]:
    """``(state, node)`` of a job from Slurm's accounting (``sacct``, where the cluster keeps
    it) or its controller (``scontrol``: kept ``MinJobAge`` after the job ended), or
    ``(None, None)``."""
    done = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "State,NodeList", "-j", job_id],
                          capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode == 0 and lines:
        state, _, node = lines[0].partition("|")
        state = state.split()[0] if state.strip() else None
        if state:
            return state, (node if node and node not in ("None assigned", "(null)") else None)
    done = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                          text=True, timeout=60)
    fields = dict(part.split("=", 1) for part in done.stdout.split() if "=" in part)
    node = fields.get("NodeList")
    return fields.get("JobState"), (node if node and node != "(null)" else None)
