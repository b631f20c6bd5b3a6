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

The output folder is locked while a run uses it (:mod:`logitnorm_plugin.locks`): a second
``bench`` on the same ``--out`` waits (saying so on stderr; ``lock_timeout`` / ``--lock-timeout``
bounds the wait) and then runs against what the first one left: the same request reuses its
models and cells, another training configuration of a run folder is refused. Its table holds
exactly the detector configurations it asked for (each cell is keyed by the detector's full
configuration; see :mod:`logitnorm_plugin.store`).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from logitnorm_plugin import locks
from logitnorm_plugin.atomic import remove_stale_temporaries, write_json, write_text
from logitnorm_plugin.bench_output import format_per_dataset, format_table, rows_csv
from logitnorm_plugin.conventions import canonical_name, config_hash, safe_file_part
from logitnorm_plugin.errors import DetectorFitError, UserError
from logitnorm_plugin.published import load_published, match_published
from logitnorm_plugin.tables import finite_json, plural

__all__ = ["ALL_DETECTORS", "DEFAULTS", "run"]

#: the embedded default run
DEFAULTS = {
    "benchmark": "digits",
    "losses": ("cross_entropy", "logitnorm"),
    "detectors": ("msp", "odin", "energy", "maxlogit", "logitnorm"),
    "seeds": (0, 1, 2),
    "out": "results",
    "batch_size": 256,
}

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
    train_kwargs: dict
    request: dict

    @classmethod
    def resolve(cls, loss, seed, dataset, out: Path, recipe, epochs, t, t_from, data_root,
                download, progress, device: str, outliers=None) -> _TrainRequest:
        from logitnorm_plugin.data.outliers import outliers_for
        from logitnorm_plugin.registry import get_loss_class
        from logitnorm_plugin.train_config import resolve_config

        # --t and --t-from concern the LogitNorm models only
        loss_kwargs = {"t": t} if t is not None and loss == "logitnorm" else None
        if t_from is not None:
            t_from = str(Path(t_from).resolve()) if loss == "logitnorm" else None
        # outliers go to the objectives that need them only (the dataset's named source)
        outliers = outliers_for(get_loss_class(loss), loss, dataset, outliers)
        # every conflict (t and t_from, a foreign recommended_t.json, ...) fails here
        config, _ = resolve_config(dataset, loss=loss, loss_kwargs=loss_kwargs, recipe=recipe,
                                   epochs=epochs, seed=seed, t_from=t_from, outliers=outliers)
        request = {"dataset": dataset, "loss": loss, "loss_kwargs": loss_kwargs,
                   "recipe": recipe, "epochs": epochs, "seed": seed, "t_from": t_from}
        if config.outliers is not None:  # absent otherwise: earlier request files still match
            request["outliers"] = config.outliers
        if t_from is not None and Path(t_from).is_file():
            # a rewritten recommendation is another request
            request["t_from_sha256"] = hashlib.sha256(Path(t_from).read_bytes()).hexdigest()
        run_dir = out / "runs" / f"{dataset}-{loss}-s{seed}"
        train_kwargs = dict(
            dataset=dataset, loss=loss, loss_kwargs=loss_kwargs, recipe=recipe, epochs=epochs,
            seed=seed, device=device, out=run_dir, resume="auto", data_root=data_root,
            download=download, progress=progress, t_from=t_from, outliers=outliers,
        )
        return cls(loss, seed, run_dir, train_kwargs, request)

    def is_trained(self) -> bool:
        """Whether the run folder holds a finished model trained for this request."""
        from logitnorm_plugin.runs import CARD_FILE

        request_path = self.run_dir / REQUEST_FILE
        return (
            (self.run_dir / CARD_FILE).is_file()
            and request_path.is_file()
            and json.loads(request_path.read_text(encoding="utf-8")) == self.request
        )

    def ensure_trained(self, device: str | None = None) -> bool:
        """Train (or resume) the model unless :meth:`is_trained`; whether it trained now.
        ``device`` replaces the one resolved by bench (a job resolves its own)."""
        from logitnorm_plugin.training import train

        if self.is_trained():
            return False
        kwargs = self.train_kwargs if device is None else {**self.train_kwargs, "device": device}
        train(**kwargs)
        write_json(self.run_dir / REQUEST_FILE, self.request)
        return True

    def spec(self):
        """Train (or reuse, or resume) the model and describe it as a
        :class:`~logitnorm_plugin.specs.ModelSpec`.

        A run folder that already holds a finished model trained for the same request is
        reused as it is (nothing is rewritten); an unfinished one is resumed; one trained with
        other settings is an error (:class:`~logitnorm_plugin.errors.ConfigMismatchError`):
        the trainer's ``resume="auto"`` compares every configuration recorded there."""
        from logitnorm_plugin.specs import resolve_model

        reuse = not self.ensure_trained()
        spec = resolve_model(str(self.run_dir))
        spec.extra["trained_now"] = not reuse
        spec.label = f"{self.loss}/s{self.seed}"
        spec.loss, spec.seed = self.loss, self.seed
        return spec


# -- the run -----------------------------------------------------------------------------------


def run(
    benchmark: str = DEFAULTS["benchmark"],
    models: Sequence[str] | None = None,
    losses: Sequence[str] = DEFAULTS["losses"],
    detectors: Sequence[str] = DEFAULTS["detectors"],
    seeds: Sequence[int] = DEFAULTS["seeds"],
    device: str = "cpu",
    out: str | Path = DEFAULTS["out"],
    data_root: str | None = None,
    download: bool = False,
    force: bool = False,
    batch_size: int = DEFAULTS["batch_size"],
    protocol: str = "full",
    recipe: str | None = None,
    epochs: int | None = None,
    t: float | None = None,
    t_from: str | None = None,
    progress: bool = True,
    plots: bool = True,
    num_workers: int = 0,
    threads: int | str | None = None,
    command: str | None = None,
    stdout=None,
    outliers: str | None = None,
    lock_timeout: float | None = None,
    executor=None,
) -> dict:
    """Run a comparison and write its outputs; what ``logitnorm-ood bench`` does.

    ``device`` is ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``. ``threads`` sets torch's
    CPU threads for the run (restored afterwards): a number, ``"auto"`` (1 for the digits
    benchmark on the CPU, else unchanged; :func:`~logitnorm_plugin.device.resolve_threads`)
    or ``None`` (unchanged). ``models`` items may be ``LABEL=SPEC``
    (:func:`~logitnorm_plugin.model_labels.model_specs`). ``outliers`` is the auxiliary outlier
    source of the objectives that need one (``outlier_exposure``, ...; default: the dataset's
    named source, :data:`~logitnorm_plugin.data.outliers.DEFAULT_OUTLIERS`); the other
    objectives train without. ``lock_timeout``: seconds to wait for another run that holds
    ``out`` (``None``: as long as it takes; 0: fail at once). ``executor``: an
    :class:`~logitnorm_plugin.workflows.executors.ExecutorSpec` (jobs on a local pool or Slurm;
    ``None``: inline). The other parameters are the command-line options of the same names.

    :return: dict with ``rows``, ``aggregate``, ``table`` and ``markdown`` (the table alone and
        the whole ``table.md``), ``readme_markdown`` (what ``--update-readme`` writes: the
        same, with a pointer to ``table.md`` instead of more than :data:`README_MAX_ROWS`
        per-OOD-set rows), ``config_id``, ``out``, ``seconds`` and ``plots``
    """
    call = dict(locals())  # the arguments, recorded by a --no-wait submission for gather
    from logitnorm_plugin.device import resolve_device, resolve_threads, torch_threads

    # the jobs of another executor resolve the device where they run
    requested_device, device = str(device), str(resolve_device(device))
    with torch_threads(resolve_threads(threads, device, benchmark)):
        comparison = _Comparison(
            benchmark, models, losses, detectors, seeds, device, Path(out), data_root,
            download, force, batch_size, protocol, recipe, epochs, t, t_from, progress, plots,
            num_workers, command, outliers,
        )
        if executor is not None and executor.name != "inline":
            comparison.executor = (executor, requested_device, call)
        with locks.hold(out, timeout=lock_timeout, what="results folder",
                        advice="wait for it to finish (or raise --lock-timeout), or choose "
                        "another --out folder"):
            remove_stale_temporaries(out)
            return comparison.run(stdout)


class _Comparison:
    """One bench run: checked on construction, then trained, evaluated and written."""

    def __init__(self, benchmark, models, losses, detectors, seeds, device, out, data_root,
                 download, force, batch_size, protocol, recipe, epochs, t, t_from, progress,
                 plots, num_workers, command, outliers=None):
        from logitnorm_plugin.specs import parse_detectors, resolve_benchmark

        if batch_size < 1:
            raise UserError(f"the batch size must be >= 1, got {batch_size}")
        self.start = time.perf_counter()
        self.models, self.detectors, self.device, self.out = models, detectors, device, out
        self.download, self.force, self.batch_size = download, force, batch_size
        self.protocol, self.progress, self.plots = protocol, progress, plots
        self.num_workers, self.command = num_workers, command
        self.data_root, self.executor, self.cells_elsewhere = data_root, None, 0
        # check names, data and training configurations first: nothing trains before all pass
        self.all_detectors = _means_all(detectors)
        if self.all_detectors:
            self.detectors = detectors = _every_detector()
        self.skipped: dict[str, str] = {}
        self.requests = parse_detectors(detectors)
        if not models and (not losses or not seeds):
            raise UserError("name at least one loss and one seed (or --models)")
        self.bench = resolve_benchmark(benchmark, data_root=data_root, download=download,
                                       seed=0)
        dataset = getattr(self.bench.benchmark, "dataset", None) or self.bench.name
        self.to_train = [] if models else [
            _TrainRequest.resolve(loss, seed, dataset, out, recipe, epochs, t, t_from,
                                  data_root, download, progress, device, outliers)
            for loss in losses for seed in seeds
        ]

    def run(self, stdout) -> dict:
        from logitnorm_plugin import provenance
        from logitnorm_plugin.model_labels import model_specs
        from logitnorm_plugin.specs import evaluation_config

        stdout = stdout or sys.stdout
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
        from logitnorm_plugin.registry import create_detector

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
            print(f"bench: --detectors all: left out {', '.join(self.skipped)} (cannot be built "
                  "for these models)", file=sys.stderr, flush=True)

    def _leave_out(self, specs, exc) -> None:
        failed = [r for r in self.requests
                  if any(r.key_for(s, self.bench.std) == exc.key for s in specs)]
        if not failed or len(failed) == len(self.requests):
            raise exc
        for request in failed:
            self.skipped[request.label] = f"cannot be fitted: {exc}"
        self.requests = [r for r in self.requests if r not in failed]
        self.detectors = [r.name for r in self.requests]
        if self.progress:
            print(f"bench: --detectors all: left out {', '.join(r.label for r in failed)} "
                  f"({exc})", file=sys.stderr, flush=True)

    def _evaluate(self, specs, record, cfg):
        """Evaluate into the store; aggregate this run's models and detectors from it."""
        from logitnorm_plugin.evaluation import evaluate
        from logitnorm_plugin.store import STORE_FILE, ResultStore

        # models that arch, loss and seed do not tell apart get a table row each
        self.by_model = len({(s.arch, s.loss, s.seed) for s in specs}) < len(specs)
        group_of = (lambda s: s.label) if self.by_model else (lambda s: s.loss)
        first_seed = {}
        for s in specs:
            first_seed.setdefault(group_of(s), s.label)
        self.first_seed = first_seed
        with ResultStore(self.out / STORE_FILE, replace_incompatible=self.force) as store:
            cells_before = 0 if self.force else self._stored_cells(store, specs, cfg)
            if self.progress:
                print(self._reuse_line(specs, cells_before), file=sys.stderr, flush=True)
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
                except DetectorFitError as exc:
                    # --detectors all: a detector that cannot be fitted to these models is left
                    # out (said in the title); finished cells stay in the store for the rerun
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
        by = ("model_id", *self.by[1:]) if self.by_model else self.by
        entries = store.aggregate(cfg, model_ids=list(label_of), by=by, per_dataset=per_dataset,
                                  detector_ids=detector_ids)
        if self.by_model:
            for entry in entries:
                entry["Model"] = label_of.get(entry.pop("model_id"))
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
        from logitnorm_plugin.store import STORE_FILE

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
        from logitnorm_plugin import provenance
        from logitnorm_plugin.specs import evaluation_config

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
        over = ("one row per model (arch, loss and seed do not tell them apart)"
                if self.by_model else "mean ± std over seeds")
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
    from logitnorm_plugin.registry import RegistryLoadError, RegistryWarning, entries

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


def _ordered(entries, specs, detectors, by, datasets=()):
    """Aggregate rows in the order asked for: losses (or archs) as the models came, detectors
    as named, OOD sets as the benchmark lists them."""
    first = {}
    for i, spec in enumerate(specs):
        first.setdefault(("Model", spec.label), i)
        first.setdefault(("Arch", spec.arch), i)
        first.setdefault(("Loss", spec.loss), i)
    dataset_index = {d: i for i, d in enumerate(datasets)}

    def key(entry):
        parts = [first.get((b, entry.get(b)), len(specs)) for b in by
                 if b in ("Model", "Arch", "Loss")]
        det = entry.get("Detector")
        parts.append(detectors.index(det) if det in detectors else len(detectors))
        parts.append(dataset_index.get(entry.get("Dataset"), 0))
        return parts

    return sorted(entries, key=key)


def _histograms(store, chosen, requests, bench, cfg, out: Path) -> list[Path]:
    """One PNG per detector: ID vs OOD scores of the ``chosen`` models (the first seed of each
    loss), side by side."""
    from logitnorm_plugin.conventions import ID_DATASET
    from logitnorm_plugin.plots import score_histograms

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
