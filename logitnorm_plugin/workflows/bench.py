"""Comparison benchmarks: train or load models, evaluate them, store, aggregate, write outputs.

:func:`run` is what ``logitnorm-ood bench`` does. With no arguments it runs the embedded
offline default: ``cross_entropy`` and ``logitnorm`` trained on the scikit-learn digits with
the ``digits`` recipe for seeds 0, 1, 2, evaluated with ``msp``, ``odin``, ``energy``,
``maxlogit`` and ``logitnorm`` on the ``digits`` benchmark.

Every name and every training configuration is checked before the first model trains (a typo
in the last loss, or ``--t`` together with ``--t-from``, fails at once). Outputs under ``out``
(default ``results/``):

- ``results.sqlite``: the result store (one row per model x detector x OOD set, committed as
  each cell completes; a rerun of the same command recomputes nothing that is finished);
- ``results.json`` / ``results.csv``: every row, plus (JSON) the aggregate, the provenance and
  the matched published numbers;
- ``table.md``: the table printed on stdout (mean +- std over seeds of the mean over OOD sets)
  and the per-dataset table;
- ``hist_<detector>.png``: ID vs OOD score histograms, cross-entropy beside LogitNorm (first
  seed);
- ``runs/``: the trained models (trainer run folders).

The output folder is locked while a run uses it (:mod:`logitnorm_plugin._core.locks`): a second
``bench`` on the same ``--out`` waits (saying so on stderr; ``lock_timeout`` / ``--lock-timeout``
bounds the wait) and then runs against what the first one left: the same request reuses its
models and cells, another training configuration of a run folder is refused. Its table holds
exactly the detector configurations it asked for (each cell is keyed by the detector's full
configuration; see :mod:`logitnorm_plugin.store.results`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from tqdm.auto import tqdm

from logitnorm_plugin._core import locks, provenance, regular_files
from logitnorm_plugin._core.atomic import remove_stale_temporaries, write_json, write_text
from logitnorm_plugin._core.conventions import ID_DATASET, canonical_name, safe_file_part
from logitnorm_plugin._core.device import resolve_device, resolve_threads, torch_threads
from logitnorm_plugin._core.digests import config_hash, sha256_file
from logitnorm_plugin._core.errors import DetectorFitError, DetectorScoreError, UserError, one_line
from logitnorm_plugin._core.model_groups import model_group
from logitnorm_plugin._core.tables import finite_json, plural
from logitnorm_plugin.data.outliers import outliers_for
from logitnorm_plugin.evaluation.engine import evaluate
from logitnorm_plugin.evaluation.specs import (
    evaluation_config,
    parse_detectors,
    resolve_benchmark,
    resolve_model,
)
from logitnorm_plugin.plots import score_histograms
from logitnorm_plugin.registry.entry_points import (
    RegistryLoadError,
    RegistryWarning,
    create_detector,
    entries,
    get_loss_class,
)
from logitnorm_plugin.reporting.bench_output import format_per_dataset, format_table, rows_csv
from logitnorm_plugin.store.published import load_published, match_published
from logitnorm_plugin.store.results import STORE_FILE, ResultStore
from logitnorm_plugin.training.config import configure
from logitnorm_plugin.training.loop import run_training
from logitnorm_plugin.training.request import TrainRequest
from logitnorm_plugin.training.runs import CARD_FILE
from logitnorm_plugin.workflows.bench_request import DEFAULTS, BenchRequest
from logitnorm_plugin.workflows.model_labels import model_specs
from logitnorm_plugin.workflows.run_folders import replace_or_refuse, stored_differences

__all__ = ["ALL_DETECTORS", "DEFAULTS", "BenchRequest", "run"]

_log = logging.getLogger(__name__)

#: the detector list that means every registered detector the models can build
ALL_DETECTORS = "all"

#: the most per-OOD-set rows written into a README section (the rest stays in table.md)
README_MAX_ROWS = 60

#: what bench asked the trainer for, kept in each run folder it trains
REQUEST_FILE = "bench_request.json"


# -- models ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TrainRequest:
    """One model bench trains: its configuration (checked before anything trains) and what
    bench asked the trainer for (kept in the run folder, to reuse it on a rerun)."""

    loss: str
    seed: int
    run_dir: Path
    #: what the trainer is asked to do (its device replaced by a job that resolves its own)
    train: TrainRequest
    request: dict
    #: how the run already in ``run_dir`` differs from this one (empty: none, or the same)
    differs: tuple = ()
    #: ``configure(train)``, checked up front: the training (here or in a job) reuses it
    configured: tuple | None = field(default=None, compare=False, repr=False)

    @classmethod
    def resolve(cls, loss: str, seed: int, dataset: str, bench: BenchRequest,
                device: str) -> _TrainRequest:
        out, recipe, epochs, t_from = bench.out, bench.recipe, bench.epochs, bench.t_from
        t = bench.t

        # --t and --t-from concern the LogitNorm models only
        loss_kwargs = {"t": t} if t is not None and loss == "logitnorm" else None
        if t_from is not None:
            t_from = str(Path(t_from).resolve()) if loss == "logitnorm" else None
        # outliers go to the objectives that need them only (the dataset's named source)
        outliers = outliers_for(get_loss_class(loss), loss, dataset, bench.outliers)
        run_dir = out / "runs" / f"{dataset}-{loss}-s{seed}"
        train = TrainRequest(
            dataset=dataset, loss=loss, loss_kwargs=loss_kwargs, recipe=recipe, epochs=epochs,
            seed=seed, device=device, out=run_dir, resume="auto", data_root=bench.data_root,
            # one bar per run; the per-epoch lines only with progress="epochs" (--verbose)
            download=bench.download, progress=True if bench.progress == "epochs" else (
                "bar" if bench.progress else False),
            t_from=t_from, outliers=outliers,
        )
        # every conflict (t and t_from, a foreign recommended_t.json, ...) fails here
        configured = configure(train)
        config = configured[0]
        request = {"dataset": dataset, "loss": loss, "loss_kwargs": loss_kwargs,
                   "recipe": recipe, "epochs": epochs, "seed": seed, "t_from": t_from}
        if config.outliers is not None:  # absent otherwise: earlier request files still match
            request["outliers"] = config.outliers
        if t_from is not None and Path(t_from).is_file():
            # a rewritten recommendation is another request
            request["t_from_sha256"] = sha256_file(t_from)
        return cls(loss, seed, run_dir, train, request,
                   stored_differences(run_dir, config.to_dict()), configured)

    def is_trained(self) -> bool:
        """Whether the run folder holds a finished model trained for this request (a damaged
        request file counts as another one: the run's config.json then decides, in train)."""
        request_path = self.run_dir / REQUEST_FILE
        if not ((self.run_dir / CARD_FILE).is_file() and request_path.is_file()):
            return False
        try:
            return json.loads(regular_files.read_text(request_path, "request")) == self.request
        except ValueError as exc:  # not JSON (UnicodeDecodeError included)
            _log.warning("%s is damaged (%s): the run folder's config.json decides whether "
                         "its model is reused", request_path, one_line(exc, 120))
            return False

    def ensure_trained(self, device: str | None = None) -> bool:
        """Train (or resume) the model unless :meth:`is_trained`; whether it trained now.
        ``device`` replaces the one resolved by bench (a job resolves its own)."""
        if self.is_trained():
            return False
        train = self.train if device is None else replace(self.train, device=device)
        result = run_training(train, self.configured)  # configured once, up front
        write_json(self.run_dir / REQUEST_FILE, self.request)
        if train.progress == "bar":
            last = result.metrics[-1]
            tqdm.write(f"bench: trained {self.loss} s{self.seed}: {last['epoch']} epochs, "
                        f"{sum(r['seconds'] for r in result.metrics):.1f} s, accuracy "
                        f"{result.card['metrics']['final_accuracy']:.4f}", file=sys.stderr)
        return True

    def spec(self):
        """Train (or reuse, or resume) the model and describe it as a
        :class:`~logitnorm_plugin.evaluation.specs.ModelSpec`.

        A run folder that already holds a finished model trained for the same request is
        reused as it is (nothing is rewritten); an unfinished one is resumed; one trained with
        other settings is an error (:class:`~logitnorm_plugin._core.errors.ConfigMismatchError`):
        the trainer's ``resume="auto"`` compares every configuration recorded there."""

        reuse = not self.ensure_trained()
        spec = resolve_model(str(self.run_dir))
        spec.extra["trained_now"] = not reuse
        spec.label = f"{self.loss}/s{self.seed}"
        spec.loss, spec.seed = self.loss, self.seed
        return spec


# -- the run -----------------------------------------------------------------------------------


def run(request: BenchRequest | None = None, *, stdout=None, executor=None,
        **options) -> dict:
    """Run a comparison and write its outputs; what ``logitnorm-ood bench`` does.

    :param request: the whole request; or give its fields as keyword arguments
        (:class:`~logitnorm_plugin.workflows.bench_request.BenchRequest`: the command-line
        options of the same names)
    :param stdout: where the table is printed (default: ``sys.stdout``)
    :param executor: an :class:`~logitnorm_plugin.workflows.executors.ExecutorSpec`: where
        the training and evaluation jobs run (a local pool, Slurm); ``None``: inline
    :return: dict with ``rows``, ``aggregate``, ``table`` and ``markdown`` (the table alone and
        the whole ``table.md``), ``readme_markdown`` (what ``--update-readme`` writes: the
        same, with a pointer to ``table.md`` instead of more than :data:`README_MAX_ROWS`
        per-OOD-set rows), ``config_id``, ``out``, ``seconds`` and ``plots``
    """
    if request is None:
        request = BenchRequest(**options)
    elif options:
        raise TypeError(f"give a BenchRequest or its fields, not both ({sorted(options)})")
    # the request's fields, recorded by a --no-wait submission for gather
    call = {f.name: getattr(request, f.name) for f in fields(request)}
    # the jobs of another executor resolve the device where they run
    device = str(resolve_device(request.device))
    with torch_threads(resolve_threads(request.threads, device, request.benchmark)):
        comparison = _Comparison(request, device)
        if executor is not None and executor.name != "inline":
            comparison.executor = (executor, str(request.device), call)
        with locks.hold(request.out, timeout=request.lock_timeout, what="results folder",
                        advice="wait for it to finish (or raise --lock-timeout), or choose "
                        "another --out folder"):
            remove_stale_temporaries(request.out)
            return comparison.run(stdout)


class _Comparison:
    """One bench run: checked on construction, then trained, evaluated and written."""

    def __init__(self, request: BenchRequest, device: str):
        self.start = time.perf_counter()
        self.request = request
        self.models, self.detectors, self.device = request.models, request.detectors, device
        self.out, self.download, self.force = request.out, request.download, request.force
        self.batch_size, self.protocol = request.batch_size, request.protocol
        self.progress, self.plots = request.progress, request.plots
        self.num_workers, self.command = request.num_workers, request.command
        self.data_root, self.executor, self.cells_elsewhere = request.data_root, None, 0
        # check names, data and training configurations first: nothing trains before all pass
        self.all_detectors = _means_all(self.detectors)
        if self.all_detectors:
            self.detectors = _every_detector()
        self.skipped: dict[str, str] = {}
        self.requests = parse_detectors(self.detectors)
        self.bench = resolve_benchmark(request.benchmark, data_root=request.data_root,
                                       download=request.download, seed=0)
        dataset = getattr(self.bench.benchmark, "dataset", None) or self.bench.name
        self.to_train = [] if self.models else [
            _TrainRequest.resolve(loss, seed, dataset, request, device)
            for loss in request.losses for seed in request.seeds
        ]
        if not self.force:
            replace_or_refuse(self.to_train, self.out, self.force)  # before anything trains

    def run(self, stdout) -> dict:

        stdout = stdout or sys.stdout
        if not self.models:
            replace_or_refuse(self.to_train, self.out, self.force)  # under the folder's lock
        remote = self._run_jobs() if self.executor is not None else None
        if remote is not None and remote.waiting:
            return self._submitted(remote, stdout)
        if self.models:
            specs = model_specs(self.models, download=self.download)  # unique labels
        else:
            specs = [request.spec() for request in self.to_train]
        if remote is not None:
            for request, spec in zip(self.to_train, specs):
                spec.extra["trained_now"] |= request.run_dir in remote.trained
        if self.all_detectors:
            self._keep_constructible(specs)
        record = provenance.collect(
            device=self.device,
            config={
                "command": self.command, "benchmark": self.bench.name,
                "protocol": self.protocol, "models": [s.label for s in specs],
                "detectors": [r.label for r in self.requests], "batch_size": self.batch_size,
                "torch_threads": _torch_threads(),
            },
        )
        cfg = config_hash(evaluation_config(self.bench, self.protocol))
        rows, summary, per_dataset, cells_before, hist = self._evaluate(specs, record, cfg)
        return self._write(specs, rows, summary, per_dataset, cells_before, hist, record, cfg,
                           stdout)

    def _run_jobs(self):
        """``--executor local|slurm``: train and evaluate as jobs, merged into the store;
        the inline steps that follow find every model and cell (they compute nothing)."""
        from logitnorm_plugin.workflows.plan import run_remote

        spec, device, call = self.executor
        remote = run_remote(self, spec, device, call.get("threads"), call)
        self.force = False  # the jobs recomputed what --force asked for
        self.cells_elsewhere = remote.cells
        return remote

    def _submitted(self, remote, stdout) -> dict:
        """``--no-wait``: what was submitted, and how to finish."""
        print(f"submitted {plural(len(remote.submitted), 'job')} to Slurm; when they are done, "
              f"`logitnorm-ood gather {self.out}` writes the tables", file=stdout)
        return {"submitted": [(job.name, job_id) for job, job_id in remote.submitted],
                "out": self.out, "seconds": time.perf_counter() - self.start}

    def _keep_constructible(self, specs) -> None:
        """``--detectors all``: keep the detectors that every model can build (a feature
        detector needs a model the split understands, ...); say which are left out and why."""

        kept = []
        for request in self.requests:
            for spec in specs:
                try:
                    create_detector(request.cls, spec.get_model())
                except (UserError, TypeError, ValueError) as exc:
                    reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    self.skipped[request.label] = f"cannot be built: {reason}"
                    break
            else:
                kept.append(request)
        if not kept:
            raise UserError("--detectors all: no registered detector can be built for these "
                            "models: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items()))
        self.requests = kept
        self.detectors = [r.name for r in kept]
        if self.skipped and self.progress:
            _log.warning(f"bench: --detectors all: left out {', '.join(self.skipped)} (cannot "
                         "be built for these models)")

    def _leave_out(self, specs, exc) -> None:
        failed = [r for r in self.requests
                  if any(r.key_for(s, self.bench.std) == exc.key for s in specs)]
        if not failed or len(failed) == len(self.requests):
            raise exc
        why = "cannot be fitted" if isinstance(exc, DetectorFitError) else "cannot score"
        for request in failed:
            self.skipped[request.label] = f"{why}: {exc}"
        self.requests = [r for r in self.requests if r not in failed]
        self.detectors = [r.name for r in self.requests]
        if self.progress:
            _log.warning(f"bench: --detectors all: left out "
                         f"{', '.join(r.label for r in failed)} ({exc})")

    def _evaluate(self, specs, record, cfg):
        """Evaluate into the store; aggregate this run's models and detectors from it."""

        # the one rule of aggregation.aggregate: seeds are averaged within one model
        # configuration only; a Model column where a loss has several configurations
        self.by_model = (len({_spec_group(s) for s in specs})
                         > len({(s.arch, s.loss) for s in specs}))
        group_of = _spec_group
        first_seed = {}
        for s in specs:
            first_seed.setdefault(group_of(s), s.label)
        self.first_seed = first_seed
        with ResultStore(self.out / STORE_FILE, replace_incompatible=self.force) as store:
            cells_before = 0 if self.force else self._stored_cells(store, specs, cfg)
            # also without progress output: what is reused decides what the numbers mean
            tqdm.write(self._reuse_line(specs, cells_before), file=sys.stderr)
            cells_before -= self.cells_elsewhere  # computed by this run's jobs
            while True:
                try:
                    rows = evaluate(
                        specs, self.bench, detectors=self.detectors, device=self.device,
                        batch_size=self.batch_size, store=store, force=self.force,
                        progress=self.progress, protocol=self.protocol,
                        keep_scores=(lambda s: first_seed.get(group_of(s)) == s.label)
                        if self.plots else False,
                        provenance=record, num_workers=self.num_workers, cache_dir=self.out,
                    )
                    break
                except (DetectorFitError, DetectorScoreError) as exc:
                    # --detectors all: a detector that cannot be fitted to these models or
                    # fails to score is left out (said in the title); finished cells stay
                    if not self.all_detectors:
                        raise
                    self._leave_out(specs, exc)
            self.by = (("Arch", "Loss", "Detector") if len({s.arch for s in specs}) > 1
                       else ("Loss", "Detector"))
            if self.by_model:
                self.by = ("Model", *self.by)
            # exactly the configurations asked for now: never older cells under the same name
            ids = {r.key_for(s, self.bench.std) for s in specs for r in self.requests}
            labels = [r.label for r in self.requests]
            summary = _ordered(
                self._aggregate(store, cfg, specs, ids, per_dataset=False),
                specs, labels, self.by,
            )
            per_dataset = _ordered(
                self._aggregate(store, cfg, specs, ids, per_dataset=True),
                specs, labels, self.by, self.bench.ood_names,
            )
            label_of = {r.row_name: r.label for r in self.requests}
            for row in rows:
                row["Detector"] = label_of.get(row["Detector"], row["Detector"])
            chosen = [s for s in specs if first_seed.get(group_of(s)) == s.label]
            hist = _histograms(store, chosen, self.requests, self.bench, cfg,
                               self.out) if self.plots else []
        return rows, summary, per_dataset, cells_before, hist

    def _aggregate(self, store, cfg, specs, detector_ids, per_dataset: bool) -> list[dict]:
        """The store's aggregate of this run's models and detector configurations; one row per
        model (labelled as given now, whatever label a stored cell carries) where ``by``
        starts with ``Model``."""
        label_of = {s.model_id(): s.label for s in specs}
        members: dict[str, list] = {}
        for s in specs:
            members.setdefault(_spec_group(s), []).append(s.label)
        by = self.by[1:] if self.by_model else self.by
        entries = store.aggregate(cfg, model_ids=list(label_of), by=by, per_dataset=per_dataset,
                                  detector_ids=detector_ids)
        for entry in entries:
            # a configuration of one model is labelled as given now
            mine = members.get(entry["model_group"], [])
            if len(mine) == 1:
                entry["Model"] = mine[0]
        return entries

    def _stored_cells(self, store, specs, cfg) -> int:
        """How many of this run's cells (model x detector x OOD set) the store already holds."""
        count = 0
        for spec in specs:
            keys = {r.key_for(spec, self.bench.std) for r in self.requests}
            count += sum(1 for key, dataset in store.cells(spec.model_id(), cfg)
                         if key in keys and dataset in self.bench.ood_names)
        return count

    def _reuse_line(self, specs, cells_before: int) -> str:
        """What this run reuses and what it still computes (one line, before evaluation)."""

        cells = len(specs) * len(self.requests) * len(self.bench.ood_names)
        if self.models:
            models = f"{plural(len(specs), 'model')} given with --models"
        else:
            reused = sum(not s.extra.get("trained_now") for s in specs)
            models = (f"reused {reused} of {plural(len(specs), 'trained model')} from "
                      f"{self.out / 'runs'}")
        jobs = (f" ({self.cells_elsewhere} of them computed by this run's jobs)"
                if self.cells_elsewhere else "")
        return (f"bench: {models}, {cells_before} of {plural(cells, 'cell')} from "
                f"{self.out / STORE_FILE}{jobs}; {cells - cells_before} to evaluate on "
                f"{self.device}")

    def _write(self, specs, rows, summary, per_dataset, cells_before, hist, record, cfg,
               stdout) -> dict:
        """Print the table; write table.md, results.csv and results.json."""

        bench, by = self.bench, self.by
        published = load_published()
        archs = {s.arch for s in specs}
        arch_of = {s.loss: s.arch for s in specs}
        matched = {}
        for entry in summary:
            arch = entry.get("Arch", arch_of.get(entry.get("Loss")) if len(archs) == 1 else None)
            matched[tuple(entry.get(b) for b in by)] = match_published(
                bench.name, self.protocol, arch, entry.get("Loss"), entry.get("Detector"),
                published,
            )
        table = format_table(summary, by, list(bench.groups), matched, published.get("sources"))
        seconds = time.perf_counter() - self.start
        over = ("mean ± std over the seeds of each model configuration (Model: a loss with "
                "several configurations)" if self.by_model else "mean ± std over seeds")
        title = (
            f"Benchmark `{bench.name}` (protocol {self.protocol}), "
            f"{plural(len(specs), 'model')}, detectors "
            f"{', '.join(r.label for r in self.requests)}; values in %, {over} of the mean "
            f"over {plural(len(bench.ood_names), 'OOD set')} "
            f"({', '.join(bench.ood_names)}). "
            "FPR95TPR: pytorch-ood's (OOD positive, ID flagged at 95% OOD detected); "
            "FPR95-ID95: the LogitNorm paper's (OOD accepted at 95% ID kept). ACC: ID test "
            "accuracy."
        )
        if self.skipped:
            title += (" Left out of `--detectors all` for these models: "
                      + "; ".join(f"{k} ({v})" for k, v in self.skipped.items()) + ".")
        temperatures = sorted({s.t for s in specs if s.loss == "logitnorm" and s.t is not None})
        if temperatures:
            title += (" LogitNorm models trained with t = "
                      + ", ".join(f"{t:g}" for t in temperatures) + ".")
        trained_now = sum(bool(s.extra.get("trained_now")) for s in specs)
        parts = [f"# logitnorm-ood bench: {bench.name}", title, table, "## Per OOD set",
                 format_per_dataset(per_dataset, by)]
        footer = (
            f"Command: `{self.command or 'logitnorm-ood bench'}`; device "
            f"{provenance.device_name(self.device)}, torch threads: {_torch_threads()}; run "
            f"time {seconds:.1f} s after interpreter start-up; "
            + (f"{plural(len(specs), 'model')} given with --models" if self.models else
               f"{trained_now} of {plural(len(specs), 'model')} trained in this run, "
               f"{len(specs) - trained_now} reused from runs/")
            + f"; {len(rows) - cells_before} of {plural(len(rows), 'cell')} computed in this "
            "run, the others read from results.sqlite."
        )
        md = "\n\n".join([*parts, footer]) + "\n"
        # a README keeps its per-OOD-set table only while it stays readable
        readme = md if len(per_dataset) <= README_MAX_ROWS else "\n\n".join([
            *parts[:4], f"{len(per_dataset)} rows: see `{self.out / 'table.md'}`.", footer,
        ]) + "\n"
        print(title + "\n\n" + table, file=stdout)
        out = self.out
        write_text(out / "table.md", md)
        write_text(out / "results.csv", rows_csv(rows))
        write_json(out / "results.json", finite_json({
            "benchmark": bench.name,
            "config_id": cfg,
            "config": evaluation_config(bench, self.protocol),
            "provenance": record,
            "rows": rows,
            "aggregate": summary,
            "aggregate_per_dataset": per_dataset,
            "published": [p for v in matched.values() for p in v],
            "plots": [str(p.name) for p in hist],
            "seconds": seconds,
        }), default=repr)
        print(f"\nwrote {out}/ (results.sqlite, results.json, results.csv, table.md"
              + (", " + ", ".join(p.name for p in hist) if hist else "")
              + f") in {seconds:.1f} s", file=stdout)
        return {"rows": rows, "aggregate": summary, "table": table, "markdown": md,
                "readme_markdown": readme,
                "config_id": cfg, "out": out, "seconds": seconds, "plots": hist}


def _means_all(detectors) -> bool:
    """``"all"`` (or ``["all"]``): every registered detector the models can build."""
    if isinstance(detectors, str):
        return canonical_name(detectors) == ALL_DETECTORS
    items = list(detectors)
    return len(items) == 1 and isinstance(items[0], str) and (
        canonical_name(items[0]) == ALL_DETECTORS)


def _every_detector() -> list[str]:
    """Every registered detector that imports (a broken entry is skipped with a warning), by
    its name, or ``distribution:name`` where two distributions declare one name."""

    found = entries("detector")
    names = []
    for entry in found:
        try:
            entry.load()
        except RegistryLoadError as exc:
            warnings.warn(f"Skipping: {exc}", RegistryWarning, stacklevel=3)
            continue
        twice = sum(e.name == entry.name for e in found) > 1
        names.append(entry.qualified_name if twice else entry.name)
    return names


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _spec_group(spec) -> str:
    """The model group of a spec (:func:`~logitnorm_plugin._core.model_groups.group_of` of
    its rows)."""
    config = spec.model_config()
    return model_group(config) if config is not None else f"model:{spec.model_id()}"


def _ordered(entries, specs, detectors, by, datasets=()):
    """Aggregate rows in the order asked for: losses (or archs) as the models came, detectors
    as named, OOD sets as the benchmark lists them."""
    first = {}
    for i, spec in enumerate(specs):
        first.setdefault(("model_group", _spec_group(spec)), i)
        first.setdefault(("Arch", spec.arch), i)
        first.setdefault(("Loss", spec.loss), i)
    dataset_index = {d: i for i, d in enumerate(datasets)}

    def key(entry):
        parts = [first.get(("model_group", entry.get("model_group")) if b == "Model"
                           else (b, entry.get(b)), len(specs)) for b in by
                 if b in ("Model", "Arch", "Loss")]
        det = entry.get("Detector")
        parts.append(detectors.index(det) if det in detectors else len(detectors))
        parts.append(dataset_index.get(entry.get("Dataset"), 0))
        return parts

    return sorted(entries, key=key)


def _histograms(store, chosen, requests, bench, cfg, out: Path) -> list[Path]:
    """One PNG per detector: ID vs OOD scores of the ``chosen`` models (the first seed of each
    loss), side by side."""

    paths = []
    for request in requests:
        panels = {}
        for spec in chosen:
            key = request.key_for(spec, bench.std)
            sets = {}
            for dataset in [ID_DATASET, *bench.ood_names]:
                values = store.scores(spec.model_id(), cfg, key, dataset)
                if values is not None:
                    sets[dataset] = values.numpy()
            if ID_DATASET in sets and len(sets) > 1:
                panels[spec.label] = sets
        if panels:
            path = out / f"hist_{safe_file_part(request.label)}.png"
            score_histograms(panels, path, title=f"{bench.name}: {request.label} outlier scores")
            paths.append(path)
    return paths
