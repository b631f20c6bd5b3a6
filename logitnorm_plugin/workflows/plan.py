"""A bench as a plan of jobs, run by an executor; the driver's side of ``--executor``.

:func:`bench_plan` lists what a bench still has to do: one :class:`~logitnorm_plugin.workflows.
jobs.TrainJob` per model whose run folder is not complete (loss x seed), then one
:class:`~logitnorm_plugin.workflows.jobs.EvaluateJob` per model whose cells the store does not
all hold (every detector and OOD set of that model: one forward pass per dataset, its fit
cache). :func:`run_remote` hands the plan to the executor, merges the shards the jobs leave
(:mod:`logitnorm_plugin.workflows.shards`), reports failed jobs (one line each, exit status 2,
never a traceback of the driver) and returns; ``bench`` then aggregates and writes its tables
from the store exactly as an inline run does (it finds every model trained and every cell
stored, so it computes nothing).

A rerun of the same command plans only what is missing: models whose training did not finish
(resumed from their last checkpoint), models with missing cells. ``--no-wait`` (Slurm) records
the submission in ``<out>/workflow/submission.json``; ``logitnorm-ood gather OUT`` waits for
those jobs and finishes the tables (:mod:`logitnorm_plugin.workflows.gather`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from logitnorm_plugin._core.atomic import write_json
from logitnorm_plugin._core.digests import config_hash
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.evaluation.specs import evaluation_config, resolve_model
from logitnorm_plugin.store.results import STORE_FILE, ResultStore
from logitnorm_plugin.workflows.executors import ExecutorSpec, LocalPool, Outcome, SlurmArrays
from logitnorm_plugin.workflows.jobs import EvaluateJob, EvaluationRequest, Job, TrainJob
from logitnorm_plugin.workflows.shards import WORKFLOW_DIR, merge_shards, shard_path

__all__ = ["JobsFailedError", "Plan", "RemoteResult", "bench_plan", "report_failures",
           "run_jobs", "run_remote"]

_log = logging.getLogger(__name__)

#: the record of a ``--no-wait`` submission, under ``<out>/workflow/``
SUBMISSION_FILE = "submission.json"


class JobsFailedError(UserError):
    """Jobs of a plan failed; the message has one line per failed job."""


@dataclass
class Plan:
    """The jobs a bench still needs: trainings first, then evaluations (each names the
    training job it waits for in ``after``, or ``None``)."""

    trainings: list = field(default_factory=list)
    evaluations: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.trainings) + len(self.evaluations)


@dataclass
class RemoteResult:
    """What the executor did for a bench: run folders it trained, cells it added."""

    trained: set = field(default_factory=set)
    cells: int = 0
    submitted: list = field(default_factory=list)  # (job, Slurm id) of a --no-wait submission

    @property
    def waiting(self) -> bool:
        return bool(self.submitted)


@dataclass(frozen=True)
class _Context:
    out: Path
    device: str
    threads: int | str | None

    @property
    def status_dir(self) -> str:
        return str(self.out / WORKFLOW_DIR / "status")


def bench_plan(comparison, ctx: _Context, force: bool | None = None) -> Plan:
    """The jobs ``comparison`` (bench's run, checked) still needs (see the module doc);
    ``force`` (default: the comparison's ``--force``) evaluates every model again."""
    c = comparison
    force = c.force if force is None else force
    plan = Plan()
    settings = EvaluationRequest(
        benchmark=c.bench.name, detectors=tuple(c.detectors), batch_size=c.batch_size,
        protocol=c.protocol, num_workers=c.num_workers, data_root=c.data_root,
        download=c.download, cache_dir=str(c.out), command=c.command)
    cfg = config_hash(evaluation_config(c.bench, c.protocol))
    first_seed = {}
    for request in c.to_train:
        first_seed.setdefault(request.loss, request.run_dir)
    with ResultStore(c.out / STORE_FILE, replace_incompatible=c.force) as store:
        for request in c.to_train:
            name = f"{request.loss}/s{request.seed}"
            slug = request.run_dir.name
            after = None
            if not request.is_trained():
                after = f"train-{slug}"
                plan.trainings.append(TrainJob(
                    name=f"train {name}", slug=after, status_dir=ctx.status_dir,
                    device=ctx.device, threads=ctx.threads, dataset=c.bench.name,
                    request=request))
            elif not force:
                spec = resolve_model(str(request.run_dir))
                keys = {r.key_for(spec, c.bench.std) for r in c.requests}
                stored = {cell for cell in store.cells(spec.model_id(), cfg)}
                if all((k, d) in stored for k in keys for d in c.bench.ood_names):
                    continue
            plan.evaluations.append(EvaluateJob(
                name=f"evaluate {name}", slug=f"evaluate-{slug}", status_dir=ctx.status_dir,
                device=ctx.device, threads=ctx.threads, dataset=c.bench.name,
                model=str(request.run_dir),
                label=name, loss=request.loss, seed=request.seed,
                keep_scores=bool(c.plots) and first_seed[request.loss] == request.run_dir,
                shard=str(shard_path(c.out, f"evaluate-{slug}")), settings=settings,
                after=after))
    return plan


def run_remote(comparison, spec: ExecutorSpec, device: str, threads: int | str | None,
               call: dict | None = None) -> RemoteResult:
    """Run what ``comparison`` still needs on ``spec``'s executor and merge the results into
    its store; with ``--no-wait``, submit and record the submission (``call``: bench's
    arguments, for ``gather``).

    :raises JobsFailedError: one line per failed job, and the command that reruns them
    """
    c = comparison
    if c.models:
        raise UserError(f"--executor {spec.name} trains and evaluates the models of --losses "
                        "and --seeds; evaluate --models with the inline executor")
    if c.all_detectors:
        raise UserError(f"--executor {spec.name}: name the detectors (--detectors all is "
                        "decided per model, in one process: use the inline executor)")
    ctx = _Context(c.out, device, threads)
    folder = c.out / WORKFLOW_DIR
    submission = folder / SUBMISSION_FILE
    result = RemoteResult()
    if spec.gather:
        if not submission.is_file():
            raise UserError(f"{c.out} holds no submission to gather ({submission} is missing): "
                            "run the bench command with --executor slurm --no-wait first")
        submitted = _read_submission(submission)
        outcomes = SlurmArrays(spec, folder / "slurm", c.progress).wait(submitted)
    else:
        if submission.is_file():
            raise UserError(f"{c.out} has jobs submitted with --no-wait ({submission}): "
                            f"finish them with `logitnorm-ood gather {c.out}` first")
        result.cells += merge_shards(c.out, remove_temporaries=True).added
        plan = bench_plan(c, ctx)
        if not plan:
            return result
        if spec.name == "local":
            outcomes = LocalPool(spec, folder, c.progress).run(plan)
        else:
            arrays = SlurmArrays(spec, folder / "slurm", c.progress)
            submitted = arrays.submit(plan)
            # recorded also while waiting: a driver that is interrupted can be gathered
            write_json(submission, {"call": _json_call(call), "command": c.command, "jobs": [
                {"name": job.name, "slug": job.slug, "status_dir": job.status_dir,
                 "kind": type(job).__name__, "run_dir": _run_dir(job), "after": job.after,
                 "job_id": job_id}
                for job, job_id in submitted]})
            if not spec.wait:
                result.submitted = submitted
                return result
            outcomes = arrays.wait(submitted)
    # --force: the jobs recomputed every cell of their models; theirs replace the store's
    result.cells += merge_shards(c.out, remove_temporaries=True, replace=c.force).added
    submission.unlink(missing_ok=True)
    result.trained = {Path(_run_dir(o.job)) for o in outcomes
                      if o.ok and _run_dir(o.job) and o.job.slug.startswith("train-")}
    failed = [o for o in outcomes if not o.ok]
    failed_training = {o.job.slug for o in failed if o.job.slug.startswith("train-")}
    for o in failed:
        if o.job.after in failed_training:  # Slurm ran it (afterany) without its model
            o.state, o.error, o.tail = "NOT RUN", "its training job failed", []
    if failed:
        report_failures(failed, len(outcomes), c.command)
    left = bench_plan(c, ctx, force=False)
    if left:
        raise UserError(f"{len(left)} jobs of this bench are still missing after every job "
                        "finished: " + ", ".join(j.name for j in [*left.trainings,
                                                                 *left.evaluations]))
    return result


def _json_call(call: dict | None) -> dict:
    """bench's arguments as JSON, without those that ``gather`` gives itself."""
    skip = ("stdout", "executor", "models", "lock_timeout")
    return {k: (list(v) if isinstance(v, (tuple, list)) else
                str(v) if isinstance(v, Path) else v)
            for k, v in (call or {}).items() if k not in skip}


def _run_dir(job: Job) -> str | None:
    if isinstance(job, TrainJob):
        return str(job.request.run_dir)
    if isinstance(job, EvaluateJob):
        return job.model
    return getattr(job, "run_dir", None)


@dataclass(frozen=True)
class _RecordedJob(Job):
    """A job of a ``--no-wait`` submission, as ``gather`` reads it back."""

    run_dir: str | None = None


def _read_submission(path: Path) -> list[tuple[Job, str]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [(_RecordedJob(name=j["name"], slug=j["slug"], status_dir=j["status_dir"],
                          run_dir=j.get("run_dir"), after=j.get("after")), j["job_id"])
            for j in data["jobs"]]


def read_call(out) -> dict:
    """The bench arguments a ``--no-wait`` submission in ``out`` recorded."""
    path = Path(out) / WORKFLOW_DIR / SUBMISSION_FILE
    if not path.is_file():
        raise UserError(f"{out} holds no submission to gather ({path} is missing): run "
                        "`logitnorm-ood bench --executor slurm --no-wait --out "
                        f"{out} ...` first")
    return json.loads(path.read_text(encoding="utf-8"))


def run_jobs(jobs, spec: ExecutorSpec, folder: Path, progress: bool = True,
             name: str = "jobs") -> list[Outcome]:
    """Run independent jobs (``tune-t``'s grid points) on ``spec``'s executor and wait for
    them; one :class:`Outcome` each (failures are for the caller to report)."""
    if not spec.wait:
        raise UserError("--no-wait goes with bench only (this command waits for its jobs)")
    plan = Plan(trainings=list(jobs))
    if spec.name == "local":
        return LocalPool(spec, folder, progress, name=name).run(plan)
    return SlurmArrays(spec, folder / "slurm", progress, name=name).run(plan)


def report_failures(failed: list[Outcome], total: int, command: str | None) -> None:
    """Print the last log lines of each failed job, then raise one line per job."""
    lines = []
    for o in failed:
        where = f" on {o.node}" if o.node else ""
        slurm = f" (Slurm job {o.job_id})" if o.job_id else ""
        log = f"; log: {o.log}" if o.log else ""
        lines.append(f"{o.job.name}{slurm}{where}: {o.state}: {o.error}{log}")
        if o.tail:
            _log.warning("\n".join([f"last lines of {o.job.name}'s log ({o.log}):",
                                    *(f"    {line}" for line in o.tail)]))
    rerun = command or "the same command"
    raise JobsFailedError(
        f"{len(failed)} of {total} jobs failed:\n" + "\n".join(f"  {line}" for line in lines)
        + f"\nrerun `{rerun}`: it resubmits only the missing work (finished models and cells "
        "are kept, an unfinished training resumes from its last checkpoint)")
