"""Choose the LogitNorm temperature the way the paper does: on Gaussian-noise validation only.

LogitNorm has one hyperparameter, the temperature ``t``, and a value tuned for one dataset is
no default for another (0.04 for CIFAR-10, 0.0085 recommended for CIFAR-100; see
``HOST_PITFALLS.md`` items 11-12 for the digits). The paper picks ``t`` with Gaussian noise as
the validation OOD set and never looks at the test OOD sets. :func:`tune_t` (``logitnorm-ood
tune-t``) does exactly that, for any dataset and architecture the trainer knows:

1. for every ``t`` of the grid and every seed, one short training run with the trainer's recipe
   (:func:`logitnorm_plugin.train`, epochs as given; ``multistep`` milestones scaled to the
   shorter run) on the ``train`` split, with the ``val`` split held out;
2. the model scores the ``val`` split (ID) and a Gaussian-noise set generated from
   ``(VALIDATION_NOISE_SEED, index)`` (a seed no benchmark uses at test time) with MSP through
   the evaluation engine (:func:`logitnorm_plugin.evaluate`): validation accuracy,
   pytorch-ood's ``FPR95TPR``, the paper's ``FPR95-ID95`` and AUROC; each (t, seed) point is
   committed to the SQLite store (:class:`logitnorm_plugin.store.results.ResultStore`) when it is
   done, so an interrupted tuning run resumes where it stopped and a rerun recomputes nothing;
3. the means over seeds go through the stated rule (:class:`SelectionRule`, default: among the
   grid values whose mean validation accuracy is within 1 percentage point of the best, the
   lowest mean validation FPR95 in the paper's convention; ties: higher mean AUROC, then the
   smaller t);
4. output folder: ``recommended_t.json`` (grid, rule, per-value results, ``chosen_t``,
   provenance; what ``logitnorm-ood train --t-from`` reads), ``table.md``, ``tune_t.png``,
   ``results.sqlite`` and one run folder per point under ``runs/``.

Neither the test split of the ID dataset nor any test-time OOD set is read: the runs train on
``train`` and the trainer's per-epoch evaluation reads ``val`` (``eval_split="val"``).

The same protocol tunes the temperature of any other registered objective that has one
(``loss="t2fnorm"``: T2FNorm's tau; ``logitnorm-ood tune-t --loss t2fnorm``); its record names
the loss, and the chosen value is given to training as ``--loss-arg t=...``.

The digits result shipped with the package is ``tuned_t.json``
(:func:`logitnorm_plugin.training.recipes.recommended_digits_t`); ``logitnorm-ood tune-t`` is the
command line.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

from tqdm.auto import tqdm

from logitnorm_plugin import data
from logitnorm_plugin._core import atomic, locks, provenance
from logitnorm_plugin._core.arg_checks import out_path
from logitnorm_plugin._core.conventions import PAPER_FPR_KEY, canonical_name
from logitnorm_plugin._core.device import resolve_device, resolve_threads, torch_threads
from logitnorm_plugin._core.digests import config_hash
from logitnorm_plugin._core.errors import TrainingDivergedError, UserError
from logitnorm_plugin._core.tables import finite_json
from logitnorm_plugin.evaluation.engine import evaluate
from logitnorm_plugin.evaluation.specs import BenchmarkData, ModelSpec
from logitnorm_plugin.plots import plot_t_tuning
from logitnorm_plugin.registry import entry_points as registry
from logitnorm_plugin.store.results import STORE_FILE, ResultStore
from logitnorm_plugin.training import recipes
from logitnorm_plugin.training.config import configure
from logitnorm_plugin.training.loop import run_training
from logitnorm_plugin.training.recipes import RECOMMENDED_T_FILE as RESULT_FILE
from logitnorm_plugin.training.recipes import RECOMMENDED_T_FORMAT as FORMAT
from logitnorm_plugin.training.recipes import RECOMMENDED_T_VERSION as FORMAT_VERSION
from logitnorm_plugin.training.request import TrainRequest
from logitnorm_plugin.training.runs import load_trained
from logitnorm_plugin.workflows.t_selection import (
    DEFAULT_GRID,
    SUMMARY_METRICS,
    VALIDATION_NOISE_SEED,
    SelectionRule,
    edge_warnings,
    format_table,
    select_t,
    significance,
    summarize,
    t_text,
)
from logitnorm_plugin.workflows.tune_request import TuneRequest

__all__ = [
    "DEFAULT_GRID",
    "VALIDATION_NOISE",
    "VALIDATION_NOISE_SEED",
    "VALIDATION_SET_NAME",
    "tune_t",
]

#: the validation OOD set: Gaussian noise, as in the paper
VALIDATION_NOISE = "gaussian"
#: the ``Dataset`` field of the stored validation rows
VALIDATION_SET_NAME = "gaussian-val"
TABLE_FILE = "table.md"
PLOT_FILE = "tune_t.png"
DETECTOR = "msp"


# -- the validation data ----------------------------------------------------------------------


class _ValidationSets:
    """The ID validation split against seeded Gaussian noise, in the shape the evaluation engine
    reads a benchmark (``id_test_set`` / ``ood_sets``); nothing here is a test set."""

    def __init__(self, val, noise):
        self.val, self.noise = val, noise
        self.ood_names = [VALIDATION_SET_NAME]
        self.preprocessing = val.preprocessing

    def id_test_set(self):
        return self.val

    def ood_sets(self):
        return [self.noise]

    def train_set(self):  # pragma: no cover - MSP needs no fitting
        raise RuntimeError("tune-t validation data has no training set for fitting detectors")


def _load_validation(dataset: str, split_seed: int, noise_n: int | None, noise_seed: int,
                     data_root, download: bool):

    opened = data.open_dataset(dataset)  # the name resolved, an image folder decoded, once
    meta = opened.meta
    val = opened.split("val", data_root, download, split_seed)
    n = int(noise_n) if noise_n is not None else max(1000, len(val))
    noise = data.load_ood(
        VALIDATION_NOISE, size=tuple(meta["size"]), mean=tuple(meta["mean"]),
        std=tuple(meta["std"]), seed=noise_seed, n=n, channels=int(meta["in_channels"]),
        like=opened,
    )
    return val, noise


# -- training ---------------------------------------------------------------------------------

def _shortened(recipe, epochs: int | None) -> Dict[str, Any]:
    """Recipe overrides of a shortened run: ``multistep`` milestones scaled by
    ``epochs / recipe.epochs`` so the learning rate still decays (cosine schedules follow the
    run length by themselves)."""
    if epochs is None or recipe.schedule != "multistep" or not recipe.milestones:
        return {}
    if int(epochs) == recipe.epochs:
        return {}
    scale = int(epochs) / recipe.epochs
    milestones = sorted({max(1, round(m * scale)) for m in recipe.milestones})
    return {"milestones": tuple(m for m in milestones if m < int(epochs))}


def _train_point(request: TrainRequest, configured=None) -> str:
    """Train one grid point (also the worker function of ``jobs > 1``); returns the run folder.
    ``configured``: the point's configuration checked up front (inline: not configured again)."""

    return os.fspath(run_training(request, configured))


# -- the tuning run ---------------------------------------------------------------------------


def tune_t(
    dataset: str = "digits",
    *,
    arch: str | None = None,
    grid: Sequence[float] = DEFAULT_GRID,
    epochs: int | None = None,
    seeds: Sequence[int] = (0,),
    out="tune-t",
    device: str = "cpu",
    recipe: str | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    acc_margin: float = 0.01,
    metric: str = PAPER_FPR_KEY,
    noise_n: int | None = None,
    noise_seed: int = VALIDATION_NOISE_SEED,
    data_root=None,
    download: bool = False,
    force: bool = False,
    jobs: int = 1,
    amp=None,
    compile=None,
    progress: bool = True,
    callback: Callable[[Dict[str, Any]], None] | None = None,
    command: str | None = None,
    stdout=None,
    threads: int | str | None = None,
    loss: str = "logitnorm",
    executor=None,
    **recipe_overrides,
) -> Dict[str, Any]:
    """
    Choose the LogitNorm temperature on Gaussian-noise validation, as the paper does.

    One short training run per (t, seed) on the ``train`` split with ``val`` held out, scored
    with MSP on ``val`` (ID) vs seeded Gaussian noise; results go to the SQLite store in ``out``
    as each point finishes (a rerun recomputes nothing that is stored); ``rule`` picks t from the
    means over seeds. See the module documentation for the files written.

    :param dataset: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or an image-folder path
    :param arch: architecture (default: the recipe's)
    :param grid: temperatures to try (positive)
    :param epochs: epochs of each run (default: the recipe's); ``multistep`` milestones are
        scaled to it
    :param seeds: training seeds; results are averaged over them
    :param out: output folder
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``
    :param recipe: trainer recipe (default: the trainer's default for ``dataset``)
    :param batch_size: override of the recipe's batch size
    :param lr: override of the recipe's learning rate
    :param acc_margin: accuracy margin of the rule, a fraction (0.01 = 1 percentage point)
    :param metric: what the rule minimises: ``"FPR95-ID95"`` (paper) or ``"FPR95TPR"``
    :param noise_n: number of validation noise images (default ``max(1000, len(val))``)
    :param noise_seed: seed of the validation noise (keep it away from test-time seeds)
    :param data_root: data folder
    :param download: allow downloading the ID dataset
    :param force: discard stored points and run folders of this configuration and recompute
    :param jobs: train this many grid points at once in worker processes (e.g. several small
        runs on one GPU); 1 trains in this process
    :param amp: the trainer's autocast switch (default: on for CUDA, off on CPU)
    :param compile: the trainer's ``torch.compile`` switch (default: on for CUDA); for many
        tiny runs (digits on a GPU) ``False`` saves a compilation per run
    :param progress: progress output on stderr
    :param callback: called with each point's record after it is stored (an exception raised
        there stops the tuning; stored points stay)
    :param command: the command line to record (default: rebuilt from the arguments)
    :param stdout: where the table goes (default ``sys.stdout``); ``False`` prints nothing
    :param threads: torch CPU threads while training and scoring, also in ``jobs`` workers
        (restored afterwards): a number, ``"auto"`` (1 for the digits on the CPU, see
        :func:`~logitnorm_plugin._core.device.resolve_threads`) or ``None`` (unchanged)
    :param loss: the objective whose ``t`` is tuned: ``"logitnorm"``, or another registered
        loss with a temperature ``t`` (``"t2fnorm"``: its tau), by the same protocol
    :param executor: an :class:`~logitnorm_plugin.workflows.executors.ExecutorSpec`: the grid
        points train as jobs of a local pool or of Slurm (scored here); ``None``: as ``jobs``
    :param recipe_overrides: further recipe fields for every run (e.g. ``weight_decay=0.0``)
    :return: the ``recommended_t.json`` record (a dict; ``chosen_t`` is the answer)
    """
    started = time.perf_counter()
    out_path(out)  # an empty path is refused, not taken as the current folder
    request = TuneRequest(
        dataset=dataset, arch=arch, grid=tuple(grid), epochs=epochs, seeds=tuple(seeds), out=out,
        device=device, recipe=recipe, batch_size=batch_size, lr=lr, acc_margin=acc_margin,
        metric=metric, noise_n=noise_n, noise_seed=noise_seed, jobs=jobs, amp=amp,
        compile=compile, threads=threads, loss=canonical_name(loss),
    )
    rule = SelectionRule(acc_margin=float(acc_margin), metric=metric)
    grid, seeds = list(request.grid), list(request.seeds)
    if executor is not None and not executor.wait:
        raise UserError("--no-wait goes with bench only: tune-t scores its points as they end")
    if "train_split" in recipe_overrides or "loss_kwargs" in recipe_overrides:
        raise UserError("tune-t sets train_split='train' and the loss temperature itself")
    loss = request.loss
    if "t" not in inspect.signature(registry.get_loss_class(loss)).parameters:
        raise UserError(f"tune-t tunes a temperature t, and loss '{loss}' takes none")
    resolved_device = resolve_device(device)
    thread_count = resolve_threads(threads, resolved_device, dataset)
    rec = recipes.get_recipe(recipe if recipe is not None else recipes.default_recipe_for(dataset))
    overrides = {**_shortened(rec, epochs), **recipe_overrides, "train_split": "train"}
    # what every grid point's training shares, from the tuning request (recipe fields among
    # the overrides, as train takes them); each point's request is this one with its t, seed
    # and run folder (_Tuning.training), passed down whole
    shared = TrainRequest.of(
        dataset=request.dataset, arch=request.arch, loss=request.loss, recipe=rec.name,
        epochs=request.epochs, batch_size=request.batch_size, lr=request.lr,
        device=str(resolved_device), resume="auto", amp=request.amp, compile=request.compile,
        data_root=data_root, download=download, eval_split="val",
        progress=progress and int(jobs) == 1, **overrides,
    )
    # one tuning per folder at a time: a second one waits, then reuses the stored points
    with locks.hold(out, timeout=None, what="tuning folder"):
        atomic.remove_stale_temporaries(out)
        tuning = _Tuning(Path(out), grid, seeds, shared, resolved_device, force)
        if executor is not None and executor.name != "inline":
            tuning.executor = (executor, str(device), threads, command)
        val, noise = _load_validation(dataset, tuning.split_seed, noise_n, noise_seed, data_root,
                                      download)
        tuning.set_validation(val, noise, noise_seed, rule, rec.name, overrides)
        with torch_threads(thread_count):
            points, trained, reused = tuning.run(int(jobs), progress, callback, thread_count)

        summary = summarize(points.values(), seeds)
        chosen, eligible = select_t(summary, rule)
        for s in summary:
            s["eligible"] = float(s["t"]) in eligible
            s["chosen"] = float(s["t"]) == chosen
            s["per_seed"] = [
                {k: v for k, v in points[(s["t"], seed)].items() if k != "t"}
                for seed in s["seeds"]
            ]
        if command is None:
            command = request.command_line()
        first = tuning.first
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "chosen_t": chosen,
            "dataset": first["dataset"],
            "arch": first["arch"],
            "loss": loss,
            "detector": DETECTOR,
            "grid": grid,
            "seeds": seeds,
            "rule": rule.to_dict(),
            "results": summary,
            "warnings": edge_warnings(chosen, grid),
            "significance": significance(summary, chosen, rule),
            "training": {
                "recipe": rec.name,
                "epochs": first["epochs"],
                "train_split": "train",
                "overrides": {k: (list(v) if isinstance(v, tuple) else v)
                              for k, v in overrides.items()},
                "config": {k: v for k, v in first.items()
                           if k not in ("t", "t_source", "t_from", "seed", "loss_kwargs")},
            },
            "validation": tuning.validation,
            "points": {"total": len(tuning.configs), "computed": trained, "reused": reused},
            "store": STORE_FILE,
            "command": command,
            "seconds": time.perf_counter() - started,
            "provenance": tuning.provenance,
        }
        _write_outputs(record, tuning.out, stdout)
        return record


class _Tuning:
    """The grid points of one tuning run: their configurations, store ids and run folders."""

    def __init__(self, out: Path, grid, seeds, shared: TrainRequest, device, force: bool):

        self.out, self.shared, self.amp, self.device = out, shared, shared.amp, device
        self.force, self.loss = force, shared.loss
        self.executor = None  # (ExecutorSpec, device, threads, command) of --executor
        # every name and value is checked here, before any data is read or any run starts
        self.configured = {(t, seed): configure(self.point(t, seed))
                           for t in grid for seed in seeds}
        self.configs = {key: c[0].to_dict() for key, c in self.configured.items()}
        self.first = self.configs[(grid[0], seeds[0])]
        self.split_seed = int(self.first.get("split_seed", 0))

    def set_validation(self, val, noise, noise_seed: int, rule, recipe: str, overrides) -> None:

        first = self.first
        self.val = val
        self.validation = {
            "id": {"dataset": first["dataset"], "split": "val", "split_seed": self.split_seed,
                   "held_out_from": "the training split (the runs train on 'train' = the rest)",
                   "n": len(val)},
            "ood": {"name": VALIDATION_NOISE, "seed": int(noise_seed), "n": len(noise),
                    "generated_as": "a pure function of (seed, index), see "
                                    "logitnorm_plugin.data.noise"},
            "detector": DETECTOR,
            "test_split_read": False,
            "test_ood_sets_read": False,
        }
        self.bench = BenchmarkData(
            name=f"tune-t:{first['dataset']}", benchmark=_ValidationSets(val, noise),
            ood_names=[VALIDATION_SET_NAME], groups={},
            config={"benchmark": f"tune-t:{first['dataset']}", "validation": self.validation},
            mean=tuple(val.mean), std=tuple(val.std),
        )
        grid = sorted({t for t, _ in self.configs})
        seeds = sorted({s for _, s in self.configs})
        tune_config = {
            "dataset": first["dataset"], "arch": first["arch"], "recipe": recipe,
            "epochs": first["epochs"], "grid": grid, "seeds": seeds, "rule": rule.to_dict(),
            "validation": self.validation, "overrides": dict(overrides),
            "device": str(self.device),
        }
        self.provenance = provenance.collect(device=self.device, config=tune_config)

    def point_hash(self, t: float, seed: int) -> str:
        config = {k: v for k, v in self.configs[(t, seed)].items()
                  if k not in ("t_source", "t_from")}
        # device type and autocast are part of it: they change the numbers
        return config_hash({"train": config, "validation": self.validation,
                            "device": self.device.type,
                            **({"amp": self.amp} if self.amp is not None else {})})

    def point_id(self, t: float, seed: int) -> str:
        return (f"tune-t/{self.first['dataset']}/{self.first['arch']}/{self.loss}/"
                f"t={t_text(t)}/s{seed}/" + self.point_hash(t, seed))

    def run_dir(self, t: float, seed: int) -> Path:
        # the hash keeps a run of another configuration (other epochs, lr, ...) in its own folder
        return self.out / "runs" / f"t{t_text(t)}-s{seed}-{self.point_hash(t, seed)[:8]}"

    def point(self, t: float, seed: int) -> TrainRequest:
        """The configuration part of one grid point's training (no run folder yet)."""
        return replace(self.shared, loss_kwargs={"t": t}, seed=seed)

    def training(self, t: float, seed: int) -> TrainRequest:
        """The whole request of one grid point's training, into its run folder."""
        return replace(self.point(t, seed), out=str(self.run_dir(t, seed)))

    def run(self, jobs: int, progress: bool, callback, threads: int | None = None):
        """Train and score every point that the store does not hold yet."""

        self.out.mkdir(parents=True, exist_ok=True)
        self.points: Dict[Tuple[float, int], Dict[str, Any]] = {}
        self.trained = reused = 0
        self.progress, self.callback = progress, callback
        with ResultStore(self.out / STORE_FILE, replace_incompatible=self.force) as self.store:
            if self.force:
                for (t, seed) in self.configs:
                    self.store.delete(model_id=self.point_id(t, seed))
                    shutil.rmtree(self.run_dir(t, seed), ignore_errors=True)
            for (t, seed) in self.configs:
                stored = _stored_point(self.store, self.point_id(t, seed), t, seed)
                if stored is not None:
                    stored["reused"] = True
                    self.points[(t, seed)] = stored
                    reused += 1
            todo = [key for key in self.configs if key not in self.points]
            if progress and reused:
                _say(f"tune-t: {reused} of {len(self.configs)} grid points already in "
                     f"{self.out / STORE_FILE}")
            if self.executor is not None and todo:
                self._run_jobs(todo)
            elif jobs == 1 or len(todo) <= 1:
                for t, seed in todo:
                    try:
                        folder = _train_point(self.training(t, seed),
                                              self.configured[(t, seed)])
                    except TrainingDivergedError as exc:
                        self.finish_point(t, seed, None, exc)
                        continue
                    self.finish_point(t, seed, folder)
            else:
                _train_parallel(todo, self.training, jobs, self.finish_point, threads)
        return self.points, self.trained, reused

    def _run_jobs(self, todo) -> None:
        """``--executor local|slurm``: train the points as jobs; score each finished one here
        (one writer of the store); then report the jobs that failed."""
        from logitnorm_plugin.workflows.jobs import TrainCallJob
        from logitnorm_plugin.workflows.plan import report_failures, run_jobs

        spec, device, threads, command = self.executor
        folder = self.out / "workflow"
        points = {self.run_dir(t, seed).name: (t, seed) for t, seed in todo}
        jobs = [TrainCallJob(name=f"train t={t_text(t)}/s{seed}", slug=slug,
                             status_dir=str(folder / "status"), device=device, threads=threads,
                             dataset=self.shared.dataset, request=self.training(t, seed))
                for slug, (t, seed) in points.items()]
        outcomes = run_jobs(jobs, spec, folder, self.progress, name="tune-t")
        for o in outcomes:
            if o.ok:
                t, seed = points[o.job.slug]
                diverged = o.result.get("diverged")
                self.finish_point(t, seed, o.result.get("run_dir"),
                                  TrainingDivergedError(diverged) if diverged else None)
        failed = [o for o in outcomes if not o.ok]
        if failed:
            report_failures(failed, len(outcomes), command)

    def finish_point(self, t: float, seed: int, folder, error=None) -> None:
        """Score a trained point on the validation data (or record its divergence)."""

        pid = self.point_id(t, seed)
        label = f"{self.loss}(t={t_text(t)})/s{seed}"
        if error is not None:
            row = {"Model": label, "Loss": self.loss, "Seed": seed, "Detector": DETECTOR,
                   "Dataset": VALIDATION_SET_NAME, "Status": "diverged", "t": t,
                   "Error": str(error)}
            self.store.put(row, model_id=pid, config_id="tune-t:status", detector_id=DETECTOR)
        else:
            spec = ModelSpec(
                label=label, model=load_trained(folder), loss=self.loss, seed=seed,
                arch=self.first["arch"], mean=tuple(self.val.mean), std=tuple(self.val.std),
                t=t, identity=pid, source="run", extra={"run_dir": str(folder)},
            )
            evaluate({label: spec}, self.bench, [DETECTOR], device=self.device,
                     store=self.store, progress=False, provenance=self.provenance)
        self.trained += 1
        point = _stored_point(self.store, pid, t, seed)
        point["reused"] = False
        self.points[(t, seed)] = point
        if self.progress:
            _say(_point_line(point))
        if self.callback is not None:
            self.callback(dict(point))


def _write_outputs(record: Dict[str, Any], out: Path, stdout) -> None:

    table = format_table(record)
    atomic.write_text(out / TABLE_FILE, table)
    plot_t_tuning(record, out / PLOT_FILE)
    record["plot"] = PLOT_FILE
    atomic.write_json(out / RESULT_FILE, finite_json(record))  # JSON has no NaN (one seed)
    if stdout is not False:
        stream = stdout if stdout is not None else sys.stdout
        print(table, file=stream)
        use = (f"--t-from {out / RESULT_FILE}" if record["loss"] == "logitnorm" else
               f"--loss {record['loss']} --loss-arg t={t_text(record['chosen_t'])}")
        print(f"wrote {out / RESULT_FILE} (use: logitnorm-ood train {use}), "
              f"{out / TABLE_FILE}, {out / PLOT_FILE}, {out / STORE_FILE}", file=stream)


def _train_parallel(todo, training, jobs, finish_point, threads: int | None = None):
    """Train ``todo`` in ``jobs`` spawned worker processes (with ``threads`` torch threads each,
    if given); evaluate and store each point in this process as soon as its run is done (one
    writer of the store)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    ctx = multiprocessing.get_context("spawn")
    init = (torch.set_num_threads, (int(threads),)) if threads is not None else (None, ())
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=init[0],
                             initargs=init[1]) as pool:
        futures = {pool.submit(_train_point, training(t, s)): (t, s) for t, s in todo}
        try:
            for future in as_completed(futures):
                t, seed = futures[future]
                try:
                    folder = future.result()
                except TrainingDivergedError as exc:
                    finish_point(t, seed, None, exc)
                    continue
                finish_point(t, seed, folder)
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _stored_point(store, pid: str, t: float, seed: int) -> Dict[str, Any] | None:
    """The stored result of one grid point, or ``None`` if it has none yet."""
    for row in store.rows(model_ids=[pid], with_ids=True):
        if row.get("Dataset") != VALIDATION_SET_NAME or row.get("Detector") != DETECTOR:
            continue
        point = {"t": float(t), "seed": int(seed), "model_id": pid,
                 "config_id": row.get("config_id")}
        if row.get("Status") == "diverged":
            point.update(status="diverged", error=row.get("Error"))
        else:
            point["status"] = "ok"
            for metric in SUMMARY_METRICS + ("ECE", "AUPR-IN", "AUPR-OUT"):
                if metric in row:
                    point[metric] = float(row[metric])
        return point
    return None


def _say(text: str) -> None:
    """A progress line (tqdm's channel: it does not break a bar on the terminal)."""
    tqdm.write(text, file=sys.stderr)


def _point_line(p: Mapping[str, Any]) -> str:
    if p["status"] != "ok":
        return f"tune-t: t={t_text(p['t'])} seed {p['seed']}: diverged"
    return (
        f"tune-t: t={t_text(p['t'])} seed {p['seed']}: val acc {100 * p['ACC']:.2f}%, "
        f"val {PAPER_FPR_KEY} {100 * p[PAPER_FPR_KEY]:.2f}%, val FPR95TPR "
        f"{100 * p['FPR95TPR']:.2f}%, val AUROC {100 * p['AUROC']:.2f}%"
    )


