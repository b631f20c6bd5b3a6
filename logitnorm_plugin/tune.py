"""Choose the LogitNorm temperature the way the paper does: on Gaussian-noise validation only.

LogitNorm has one hyperparameter, the temperature ``t``, and a value tuned for one dataset is
no default for another (0.04 for CIFAR-10, 0.0085 recommended for CIFAR-100; see
``HOST_PITFALLS.md`` items 11-12 for the digits). The paper picks ``t`` with Gaussian noise as
the validation OOD set and never looks at the test OOD sets. :func:`tune_t` (``logitnorm-ood
tune-t``) does exactly that, for any dataset and architecture the trainer knows:

1. for every ``t`` of the grid and every seed, one short training run with the trainer's recipe
   (:func:`logitnorm_plugin.train.train`, epochs as given; ``multistep`` milestones scaled to the
   shorter run) on the ``train`` split, with the ``val`` split held out;
2. the model scores the ``val`` split (ID) and a Gaussian-noise set generated from
   ``(VALIDATION_NOISE_SEED, index)`` (a seed no benchmark uses at test time) with MSP through
   the evaluation engine (:func:`logitnorm_plugin.evaluate.evaluate`): validation accuracy,
   pytorch-ood's ``FPR95TPR``, the paper's ``FPR95-ID95`` and AUROC; each (t, seed) point is
   committed to the SQLite store (:class:`logitnorm_plugin.store.ResultStore`) when it is done,
   so an interrupted tuning run resumes where it stopped and a rerun recomputes nothing;
3. the means over seeds go through the stated rule (:class:`SelectionRule`, default: among the
   grid values whose mean validation accuracy is within 1 percentage point of the best, the
   lowest mean validation FPR95 in the paper's convention; ties: higher mean AUROC, then the
   smaller t);
4. output folder: ``recommended_t.json`` (grid, rule, per-value results, ``chosen_t``,
   provenance; what ``logitnorm-ood train --t-from`` reads), ``table.md``, ``tune_t.png``,
   ``results.sqlite`` and one run folder per point under ``runs/``.

Neither the test split of the ID dataset nor any test-time OOD set is read: the runs train on
``train`` and the trainer's per-epoch evaluation reads ``val`` (``eval_split="val"``).

The digits result shipped with the package is ``tuned_t.json`` (:func:`recommended_digits_t`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from logitnorm_plugin.errors import UserError

# logitnorm_plugin.metrics.PAPER_FPR_KEY (the tests check it), spelt out here so that reading
# the shipped result (recommended_digits_t) imports neither torch nor pytorch-ood
PAPER_FPR_KEY = "FPR95-ID95"

__all__ = [
    "DEFAULT_GRID",
    "VALIDATION_NOISE",
    "VALIDATION_NOISE_SEED",
    "VALIDATION_SET_NAME",
    "SelectionRule",
    "summarize",
    "select_t",
    "tune_t",
    "format_table",
    "load_recommendation",
    "tuned_t_record",
    "recommended_digits_t",
    "cli_arguments",
    "cli_main",
]

#: the paper-style grid (log-spaced around the published 0.01 / 0.04 / 0.0085)
DEFAULT_GRID = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
#: the validation OOD set: Gaussian noise, as in the paper
VALIDATION_NOISE = "gaussian"
#: seed of the validation noise; the benchmarks generate their test-time noise from small seeds
#: (0, 1, 2, ... = the evaluation seed), so these images are never the ones tested on
VALIDATION_NOISE_SEED = 7_340_033
#: the ``Dataset`` field of the stored validation rows
VALIDATION_SET_NAME = "gaussian-val"
#: metrics a rule may minimise, with their convention
METRICS = {
    PAPER_FPR_KEY: (
        "FPR95 in the LogitNorm paper's convention (ID positive): the share of validation "
        "noise images accepted as ID at the MSP threshold that keeps 95% of the ID validation "
        "images"
    ),
    "FPR95TPR": (
        "FPR95TPR in pytorch-ood's convention (OOD positive): the share of ID validation images "
        "flagged as OOD at the MSP threshold that detects 95% of the validation noise images"
    ),
}
FORMAT = "logitnorm-plugin/recommended-t"
FORMAT_VERSION = 1
RESULT_FILE = "recommended_t.json"
TABLE_FILE = "table.md"
PLOT_FILE = "tune_t.png"
STORE_FILE = "results.sqlite"
TUNED_T_FILE = "tuned_t.json"  # in the package: the recorded digits result
DETECTOR = "msp"
_TIE = 1e-9  # means closer than this count as equal (float noise of averaging)


# -- the rule ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionRule:
    """How the temperature is chosen from the per-value means over seeds.

    Among the grid values with results for every seed and no diverged run, keep those whose
    mean validation accuracy is at least ``best - acc_margin``; among them choose the lowest
    mean ``metric``; ties (within 1e-9) go to the higher mean validation AUROC, then to the
    smaller ``t``.

    :param acc_margin: accuracy margin as a fraction (0.01 = 1 percentage point)
    :param metric: ``"FPR95-ID95"`` (the paper's convention) or ``"FPR95TPR"`` (pytorch-ood's)
    """

    acc_margin: float = 0.01
    metric: str = PAPER_FPR_KEY

    def __post_init__(self):
        if self.metric not in METRICS:
            raise UserError(
                f"unknown selection metric {self.metric!r}; use one of {list(METRICS)}"
            )
        if not (0.0 <= float(self.acc_margin) < 1.0):
            raise UserError(f"acc_margin must be a fraction in [0, 1), got {self.acc_margin}")

    def describe(self) -> str:
        """The rule in one sentence (printed and written to ``recommended_t.json``)."""
        return (
            "Among the grid values whose mean validation accuracy (over seeds) is within "
            f"{100 * self.acc_margin:g} percentage point(s) of the best mean validation accuracy, "
            f"choose the one with the lowest mean validation {self.metric} (MSP, ID validation "
            "split vs seeded Gaussian noise); ties (within 1e-9) go to the higher mean "
            "validation AUROC, then to the smaller t. Grid values with a diverged run are "
            "excluded."
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "text": self.describe(),
            "acc_margin": float(self.acc_margin),
            "acc_margin_unit": "fraction of validation accuracy (0.01 = 1 percentage point)",
            "metric": self.metric,
            "metric_convention": METRICS[self.metric],
            "tie_break": ["higher mean validation AUROC", "smaller t"],
            "excluded": "grid values where a seed diverged (non-finite loss)",
        }


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


_SUMMARY_METRICS = ("ACC", PAPER_FPR_KEY, "FPR95TPR", "AUROC")


def summarize(points: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> List[Dict[str, Any]]:
    """Per grid value: means and sample standard deviations over seeds.

    :param points: one record per (t, seed) with ``t``, ``seed``, ``status`` (``"ok"`` or
        ``"diverged"``) and, when ok, the metrics ``ACC``, ``FPR95-ID95``, ``FPR95TPR``,
        ``AUROC``
    :param seeds: the seeds every value must have
    :return: one dict per ``t`` (ascending) with ``t``, ``status`` (``"ok"``, ``"diverged"``
        or ``"incomplete"``), ``seeds`` and ``<metric>`` / ``<metric>_std`` for ok values
    """
    by_t: Dict[float, List[Mapping[str, Any]]] = {}
    for p in points:
        by_t.setdefault(float(p["t"]), []).append(p)
    out = []
    for t in sorted(by_t):
        rows = sorted(by_t[t], key=lambda p: p["seed"])
        entry: Dict[str, Any] = {"t": t, "seeds": [int(p["seed"]) for p in rows]}
        if any(p["status"] != "ok" for p in rows):
            entry["status"] = "diverged"
        elif sorted(entry["seeds"]) != sorted(int(s) for s in seeds):
            entry["status"] = "incomplete"
        else:
            entry["status"] = "ok"
            for metric in _SUMMARY_METRICS:
                entry[metric], entry[f"{metric}_std"] = _mean_std([p[metric] for p in rows])
        out.append(entry)
    return out


def select_t(summary: Sequence[Mapping[str, Any]], rule: SelectionRule = SelectionRule()):
    """Apply ``rule`` to the output of :func:`summarize`.

    :return: ``(chosen_t, eligible_ts)``
    :raises UserError: if no grid value has complete, finite results
    """
    usable = [s for s in summary if s["status"] == "ok"]
    if not usable:
        raise UserError(
            "no grid value has results for every seed without divergence; widen the grid or "
            "lower the learning rate"
        )
    best = max(s["ACC"] for s in usable)
    eligible = [s for s in usable if s["ACC"] >= best - rule.acc_margin - _TIE]
    # round away float noise so that equal means tie and the stated tie-breaks decide
    chosen = min(
        eligible,
        key=lambda s: (round(s[rule.metric] / _TIE), -round(s["AUROC"] / _TIE), s["t"]),
    )
    return float(chosen["t"]), [float(s["t"]) for s in eligible]


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
    from logitnorm_plugin import data

    meta = data.dataset_meta(dataset)
    val = data.load_split(dataset, "val", data_root, download, split_seed)
    n = int(noise_n) if noise_n is not None else max(1000, len(val))
    noise = data.load_ood(
        VALIDATION_NOISE, size=tuple(meta["size"]), mean=tuple(meta["mean"]),
        std=tuple(meta["std"]), seed=noise_seed, n=n, channels=int(meta["in_channels"]),
        like=dataset,
    )
    return val, noise


# -- training ---------------------------------------------------------------------------------


def _train_module():
    # the module, not the package attribute: ``logitnorm_plugin.train`` may be either
    return importlib.import_module("logitnorm_plugin.train")


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


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _t_text(t: float) -> str:
    return f"{t:g}"


def _train_point(kwargs: Dict[str, Any]) -> str:
    """Train one grid point (also the worker function of ``jobs > 1``); returns the run folder."""
    return os.fspath(_train_module().train(**kwargs))


# -- the tuning run ---------------------------------------------------------------------------


def _parse_floats(text) -> List[float]:
    if isinstance(text, str):
        items = [x for x in text.replace(" ", "").split(",") if x]
        try:
            return [float(x) for x in items]
        except ValueError as exc:
            raise UserError(f"--grid must be comma-separated numbers, got {text!r}") from exc
    return [float(x) for x in text]


def _parse_ints(text) -> List[int]:
    if isinstance(text, int):
        return [text]
    if isinstance(text, str):
        items = [x for x in text.replace(" ", "").split(",") if x]
        try:
            return [int(x) for x in items]
        except ValueError as exc:
            raise UserError(f"--seeds must be comma-separated integers, got {text!r}") from exc
    return [int(x) for x in text]


def tune_t(
    dataset: str = "digits",
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
    :param recipe_overrides: further recipe fields for every run (e.g. ``weight_decay=0.0``)
    :return: the ``recommended_t.json`` record (a dict; ``chosen_t`` is the answer)
    """
    from logitnorm_plugin import atomic, provenance, recipes
    from logitnorm_plugin.device import resolve_device
    from logitnorm_plugin.evaluate import BenchmarkData, ModelSpec, evaluate
    from logitnorm_plugin.store import ResultStore

    started = time.perf_counter()
    rule = SelectionRule(acc_margin=float(acc_margin), metric=metric)
    grid = sorted(set(_parse_floats(grid)))
    seeds = sorted(set(_parse_ints(seeds)))
    if not grid or any(not math.isfinite(t) or t <= 0 for t in grid):
        raise UserError(f"the grid needs positive temperatures, got {grid}")
    if not seeds:
        raise UserError("give at least one seed")
    if int(jobs) < 1:
        raise UserError(f"jobs must be >= 1, got {jobs}")
    if "train_split" in recipe_overrides or "loss_kwargs" in recipe_overrides:
        raise UserError("tune-t sets train_split='train' and the loss temperature itself")
    out = Path(out)
    module = _train_module()
    rec = recipes.get_recipe(recipe if recipe is not None else recipes.default_recipe_for(dataset))
    overrides = {**_shortened(rec, epochs), **recipe_overrides, "train_split": "train"}

    # every name and value is checked here, before any data is read or any run starts
    configs = {}
    for t in grid:
        for seed in seeds:
            cfg, _ = module.resolve_config(
                dataset, arch, "logitnorm", {"t": t}, rec.name, epochs, batch_size, lr, seed,
                eval_split="val", **overrides,
            )
            configs[(t, seed)] = cfg
    first = configs[(grid[0], seeds[0])]
    resolved_device = resolve_device(device)
    device_type = resolved_device.type
    split_seed = int(first.get("split_seed", 0))
    validation = {
        "id": {"dataset": first["dataset"], "split": "val", "split_seed": split_seed,
               "held_out_from": "the training split (the runs train on 'train' = the rest)"},
        "ood": {"name": VALIDATION_NOISE, "seed": int(noise_seed), "n": noise_n,
                "generated_as": "a pure function of (seed, index), see "
                                "logitnorm_plugin.data.noise"},
        "detector": DETECTOR,
        "test_split_read": False,
        "test_ood_sets_read": False,
    }
    val, noise = _load_validation(dataset, split_seed, noise_n, noise_seed, data_root, download)
    validation["ood"]["n"] = len(noise)
    validation["id"]["n"] = len(val)
    bench = BenchmarkData(
        name=f"tune-t:{first['dataset']}", benchmark=_ValidationSets(val, noise),
        ood_names=[VALIDATION_SET_NAME], groups={},
        config={"benchmark": f"tune-t:{first['dataset']}", "validation": validation},
        mean=tuple(val.mean), std=tuple(val.std),
    )

    def point_hash(t, seed):
        cfg = {k: v for k, v in configs[(t, seed)].items() if k not in ("t_source", "t_from")}
        # device type and autocast are part of it: they change the numbers
        return _hash({"train": cfg, "validation": validation, "device": device_type,
                      **({"amp": amp} if amp is not None else {})})

    def point_id(t, seed):
        return (f"tune-t/{first['dataset']}/{first['arch']}/logitnorm/t={_t_text(t)}/s{seed}/"
                + point_hash(t, seed))

    def run_dir(t, seed):
        # the hash keeps a run of another configuration (other epochs, lr, ...) in its own folder
        return out / "runs" / f"t{_t_text(t)}-s{seed}-{point_hash(t, seed)[:8]}"

    def train_kwargs(t, seed):
        return dict(
            dataset=dataset, arch=arch, loss="logitnorm", loss_kwargs={"t": t}, recipe=rec.name,
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
            out=str(run_dir(t, seed)), resume=True, data_root=data_root, download=download,
            progress=progress and jobs == 1, amp=amp, compile=compile, eval_split="val",
            **overrides,
        )

    tune_config = {
        "dataset": first["dataset"], "arch": first["arch"], "recipe": rec.name,
        "epochs": first["epochs"], "grid": grid, "seeds": seeds, "rule": rule.to_dict(),
        "validation": validation, "overrides": {k: v for k, v in overrides.items()},
        "device": str(device),
    }
    record_provenance = provenance.collect(device=resolved_device,
                                           config=tune_config)
    out.mkdir(parents=True, exist_ok=True)
    points: Dict[Tuple[float, int], Dict[str, Any]] = {}
    trained = reused = 0
    with ResultStore(out / STORE_FILE) as store:
        if force:
            for (t, seed) in configs:
                store.delete(model_id=point_id(t, seed))
                shutil.rmtree(run_dir(t, seed), ignore_errors=True)
        for (t, seed) in configs:
            stored = _stored_point(store, point_id(t, seed), t, seed)
            if stored is not None:
                stored["reused"] = True
                points[(t, seed)] = stored
                reused += 1
        todo = [key for key in configs if key not in points]
        if progress and reused:
            _say(f"tune-t: {reused} of {len(configs)} grid points already in {out / STORE_FILE}")

        def finish_point(t, seed, folder, error=None):
            nonlocal trained
            pid = point_id(t, seed)
            label = f"logitnorm(t={_t_text(t)})/s{seed}"
            if error is not None:
                row = {"Model": label, "Loss": "logitnorm", "Seed": seed, "Detector": DETECTOR,
                       "Dataset": VALIDATION_SET_NAME, "Status": "diverged", "t": t,
                       "Error": str(error)}
                store.put(row, model_id=pid, config_id="tune-t:status", detector_id=DETECTOR)
            else:
                spec = ModelSpec(
                    label=label, model=module.load_trained(folder), loss="logitnorm", seed=seed,
                    arch=first["arch"], mean=tuple(val.mean), std=tuple(val.std), t=t,
                    identity=pid, source="run", extra={"run_dir": str(folder)},
                )
                evaluate({label: spec}, bench, [DETECTOR], device=resolved_device,
                         store=store, progress=False, provenance=record_provenance)
            trained += 1
            point = _stored_point(store, pid, t, seed)
            point["reused"] = False
            points[(t, seed)] = point
            if progress:
                _say(_point_line(point))
            if callback is not None:
                callback(dict(point))

        if int(jobs) == 1 or len(todo) <= 1:
            for t, seed in todo:
                try:
                    folder = _train_point(train_kwargs(t, seed))
                except _diverged_error() as exc:
                    finish_point(t, seed, None, exc)
                    continue
                finish_point(t, seed, folder)
        else:
            _train_parallel(todo, train_kwargs, int(jobs), finish_point)

    summary = summarize(points.values(), seeds)
    chosen, eligible = select_t(summary, rule)
    for s in summary:
        s["eligible"] = float(s["t"]) in eligible
        s["chosen"] = float(s["t"]) == chosen
        s["per_seed"] = [
            {k: v for k, v in points[(s["t"], seed)].items() if k != "t"}
            for seed in s["seeds"]
        ]
    warnings = _edge_warnings(chosen, grid)
    if command is None:
        command = _command(dataset, arch, grid, epochs, seeds, out, device, recipe, batch_size,
                           lr, acc_margin, metric, noise_n, noise_seed, jobs, amp, compile)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "chosen_t": chosen,
        "dataset": first["dataset"],
        "arch": first["arch"],
        "loss": "logitnorm",
        "detector": DETECTOR,
        "grid": grid,
        "seeds": seeds,
        "rule": rule.to_dict(),
        "results": summary,
        "warnings": warnings,
        "training": {
            "recipe": rec.name,
            "epochs": first["epochs"],
            "train_split": "train",
            "overrides": {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in overrides.items()},
            "config": {k: v for k, v in first.items()
                       if k not in ("t", "t_source", "t_from", "seed", "loss_kwargs")},
        },
        "validation": validation,
        "points": {"total": len(configs), "computed": trained, "reused": reused},
        "store": STORE_FILE,
        "command": command,
        "seconds": time.perf_counter() - started,
        "provenance": record_provenance,
    }
    table = format_table(record)
    atomic.write_text(out / TABLE_FILE, table)
    from logitnorm_plugin.plots import plot_t_tuning

    plot_t_tuning(record, out / PLOT_FILE)
    record["plot"] = PLOT_FILE
    atomic.write_json(out / RESULT_FILE, record)
    if stdout is not False:
        stream = stdout if stdout is not None else sys.stdout
        print(table, file=stream)
        print(f"wrote {out / RESULT_FILE} (use: logitnorm-ood train --t-from "
              f"{out / RESULT_FILE}), {out / TABLE_FILE}, {out / PLOT_FILE}, "
              f"{out / STORE_FILE}", file=stream)
    return record


def _edge_warnings(chosen: float, grid: Sequence[float]) -> List[str]:
    """A choice at the end of the grid may be the grid's limit rather than the data's answer."""
    if len(grid) < 2:
        return []
    if chosen == max(grid):
        return [f"chosen t = {_t_text(chosen)} is the largest value of the grid: a larger t may "
                "do better under the same rule; extend the grid upwards (finished points are "
                "reused)"]
    if chosen == min(grid):
        return [f"chosen t = {_t_text(chosen)} is the smallest value of the grid: a smaller t "
                "may do better under the same rule; extend the grid downwards (finished points "
                "are reused)"]
    return []


def _diverged_error():
    from logitnorm_plugin.errors import TrainingDivergedError

    return TrainingDivergedError


def _train_parallel(todo, train_kwargs, jobs, finish_point):
    """Train ``todo`` in ``jobs`` spawned worker processes; evaluate and store each point in this
    process as soon as its run is done (one writer of the store)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_train_point, train_kwargs(t, s)): (t, s) for t, s in todo}
        try:
            for future in as_completed(futures):
                t, seed = futures[future]
                try:
                    folder = future.result()
                except _diverged_error() as exc:
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
            for metric in _SUMMARY_METRICS + ("ECE", "AUPR-IN", "AUPR-OUT"):
                if metric in row:
                    point[metric] = float(row[metric])
        return point
    return None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _point_line(p: Mapping[str, Any]) -> str:
    if p["status"] != "ok":
        return f"tune-t: t={_t_text(p['t'])} seed {p['seed']}: diverged"
    return (
        f"tune-t: t={_t_text(p['t'])} seed {p['seed']}: val acc {100 * p['ACC']:.2f}%, "
        f"val {PAPER_FPR_KEY} {100 * p[PAPER_FPR_KEY]:.2f}%, val FPR95TPR "
        f"{100 * p['FPR95TPR']:.2f}%, val AUROC {100 * p['AUROC']:.2f}%"
    )


def _command(dataset, arch, grid, epochs, seeds, out, device, recipe, batch_size, lr,
             acc_margin, metric, noise_n, noise_seed, jobs, amp=None, compile=None) -> str:
    parts = ["logitnorm-ood", "tune-t", "--dataset", str(dataset)]
    if arch is not None:
        parts += ["--arch", str(arch)]
    if recipe is not None:
        parts += ["--recipe", str(recipe)]
    parts += ["--grid", ",".join(_t_text(t) for t in grid)]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    parts += ["--seeds", ",".join(str(s) for s in seeds)]
    if batch_size is not None:
        parts += ["--batch-size", str(batch_size)]
    if lr is not None:
        parts += ["--lr", f"{lr:g}"]
    if float(acc_margin) != 0.01:
        parts += ["--acc-margin", f"{acc_margin:g}"]
    if metric != PAPER_FPR_KEY:
        parts += ["--metric", metric]
    if noise_n is not None:
        parts += ["--noise-n", str(noise_n)]
    if int(noise_seed) != VALIDATION_NOISE_SEED:
        parts += ["--noise-seed", str(noise_seed)]
    if int(jobs) != 1:
        parts += ["--jobs", str(jobs)]
    for flag, value in (("amp", amp), ("compile", compile)):
        if value is not None:
            parts.append(f"--{flag}" if value else f"--no-{flag}")
    parts += ["--out", str(out), "--device", str(device)]
    return shlex.join(parts)


# -- output -----------------------------------------------------------------------------------


def _pct(mean, std=None) -> str:
    if mean is None:
        return "-"
    text = f"{100 * mean:.2f}"
    return text + (f" ± {100 * std:.2f}" if std is not None else "")


def format_table(record: Mapping[str, Any]) -> str:
    """The per-value results of a ``recommended_t.json`` record as a Markdown table (with the
    rule and the chosen t below it)."""
    metric = record["rule"]["metric"]
    n_seeds = len(record["seeds"])
    header = ["t", "seeds", "val ACC %", f"val {PAPER_FPR_KEY} % (paper)",
              "val FPR95TPR % (pytorch-ood)", "val AUROC %", "within margin", "chosen"]
    lines = [
        f"LogitNorm temperature on {record['dataset']} / {record['arch']}: MSP, ID validation "
        f"split ({record['validation']['id']['n']} images) vs Gaussian noise "
        f"({record['validation']['ood']['n']} images, seed {record['validation']['ood']['seed']})"
        f"; {record['training']['epochs']} epochs of the '{record['training']['recipe']}' "
        f"recipe per run; mean ± std over {n_seeds} seed(s). Selection metric: {metric}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for s in record["results"]:
        if s["status"] != "ok":
            cells = [_t_text(s["t"]), str(len(s["seeds"])), s["status"], "-", "-", "-", "no", ""]
        else:
            cells = [
                _t_text(s["t"]), str(len(s["seeds"])), _pct(s["ACC"], s["ACC_std"]),
                _pct(s[PAPER_FPR_KEY], s[f"{PAPER_FPR_KEY}_std"]),
                _pct(s["FPR95TPR"], s["FPR95TPR_std"]), _pct(s["AUROC"], s["AUROC_std"]),
                "yes" if s.get("eligible") else "no", "**chosen**" if s.get("chosen") else "",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Rule: {record['rule']['text']}", "",
              f"Chosen t = {_t_text(record['chosen_t'])}"]
    lines += [f"Warning: {w}" for w in record.get("warnings", [])]
    return "\n".join(lines) + "\n"


# -- reading results --------------------------------------------------------------------------


def load_recommendation(path) -> Dict[str, Any]:
    """A ``recommended_t.json`` (or ``tuned_t.json``) record, checked for its format.

    :raises IncompatibleResultsError: if the file is not one
    """
    from logitnorm_plugin.errors import IncompatibleResultsError, MissingDataError

    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    if not path.is_file():
        raise MissingDataError(f"no {RESULT_FILE} at {str(path)!r}; run `logitnorm-ood tune-t`")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise IncompatibleResultsError(f"{str(path)!r} is not JSON ({exc})") from exc
    if record.get("format") != FORMAT or int(record.get("format_version", 0)) > FORMAT_VERSION:
        raise IncompatibleResultsError(
            f"{str(path)!r} is not a recommended_t.json of format version <= {FORMAT_VERSION}"
        )
    return record


def tuned_t_record() -> Dict[str, Any]:
    """The digits tuning result shipped with the package (``logitnorm_plugin/tuned_t.json``),
    with the command that reproduces it under ``"command"``."""
    return load_recommendation(Path(__file__).resolve().parent / TUNED_T_FILE)


def recommended_digits_t() -> float:
    """The LogitNorm temperature chosen by :func:`tune_t` for the digits with the digits recipe
    (the embedded default benchmark uses it)."""
    return float(tuned_t_record()["chosen_t"])


# -- command line -----------------------------------------------------------------------------


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``logitnorm-ood tune-t``."""
    parser.epilog = (
        "example: logitnorm-ood tune-t --dataset digits --grid 0.005,0.01,0.02,0.04,0.08,0.16 "
        "--seeds 0,1,2 --out tune-t/digits --device cpu; then logitnorm-ood train --t-from "
        "tune-t/digits/recommended_t.json"
    )
    parser.add_argument("--dataset", default="digits",
                        help="digits (default, offline), cifar10, cifar100 or an image-folder "
                        "path")
    parser.add_argument("--arch", default=None, help="architecture (default: the recipe's)")
    parser.add_argument("--recipe", default=None,
                        help="trainer recipe (default: digits for the digits, paper otherwise)")
    parser.add_argument("--grid", default=",".join(_t_text(t) for t in DEFAULT_GRID),
                        help="comma-separated temperatures (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (default: the recipe's; multistep milestones are "
                        "scaled to it)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--acc-margin", type=float, default=0.01,
                        help="accuracy margin of the rule as a fraction (default 0.01 = 1 "
                        "percentage point)")
    parser.add_argument("--metric", choices=list(METRICS), default=PAPER_FPR_KEY,
                        help="validation FPR95 the rule minimises (default: the paper's, "
                        "%(default)s)")
    parser.add_argument("--noise-n", type=int, default=None,
                        help="validation noise images (default: max(1000, validation size))")
    parser.add_argument("--noise-seed", type=int, default=VALIDATION_NOISE_SEED,
                        help="seed of the validation noise (default %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (default tune-t/<dataset>)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--data-root", default=None, help="folder with the datasets")
    parser.add_argument("--download", action="store_true", help="download missing data")
    parser.add_argument("--jobs", type=int, default=1,
                        help="grid points trained at once in worker processes (default 1)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA, off on CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile each run (default: on for CUDA, off on CPU)")
    parser.add_argument("--force", action="store_true",
                        help="recompute points already in the store")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def cli_main(args) -> int:
    """Run ``logitnorm-ood tune-t``."""
    tag = Path(str(args.dataset)).name.lower() or "dataset"
    out = args.out if args.out is not None else str(Path("tune-t") / tag)
    command = shlex.join(["logitnorm-ood", "tune-t", *sys.argv[2:]]) if (
        len(sys.argv) > 1 and sys.argv[1] == "tune-t"
    ) else None
    tune_t(
        dataset=args.dataset, arch=args.arch, grid=_parse_floats(args.grid),
        epochs=args.epochs, seeds=_parse_ints(args.seeds), out=out, device=args.device,
        recipe=args.recipe, batch_size=args.batch_size, lr=args.lr,
        acc_margin=args.acc_margin, metric=args.metric, noise_n=args.noise_n,
        noise_seed=args.noise_seed, data_root=args.data_root, download=args.download,
        force=args.force, jobs=args.jobs, amp=args.amp, compile=args.compile,
        progress=not args.quiet, command=command,
    )
    return 0

