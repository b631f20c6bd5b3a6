"""The evaluation engine: every model scored on every dataset once, pytorch-ood's metrics out.

:func:`evaluate` computes what pytorch-ood's
:meth:`Benchmark.evaluate <pytorch_ood.benchmark.Benchmark.evaluate>` computes (the same
:class:`~pytorch_ood.metrics.OODMetrics` numbers for the same model, data and detectors) and
fixes its traps (see ``HOST_PITFALLS.md``):

- the model is put in evaluation mode (the host leaves dropout on), and the caller's model is
  neither moved nor left in another mode: on another device a copy is evaluated, on the same
  device the training flag is restored afterwards;
- **one forward pass per dataset**: the ID test set once per model, each OOD set once; the logits
  stay on the device and every logits detector scores them (the host forwards the ID set again
  for every OOD set). With a feature or feature-map detector, that pass runs through the model's
  split (:mod:`logitnorm_plugin.evaluation.feeds`): features ``z = encoder(x)``, logits
  ``head(z)``, the backbone's maps once if a detector acts on them; feature detectors score ``z``
  (``predict_features``), ReAct/ASH/SCALE/VRA/RankFeat score that batch's backbone output
  (the host class built with an identity backbone); the split's logits are checked against
  ``model(x)`` on the first batch (one extra forward of one batch per model). With logits
  detectors only, the pass is ``model(x)``, so unsplittable models work as before. ODIN (exactly
  :class:`pytorch_ood.detector.ODIN`) reuses that forward pass for its input gradient, so it
  adds one backward and one forward per batch instead of two forwards and a backward; other
  gradient or input detectors run their own pass over the same batches in the same order;
- ``norm_std`` of ODIN (and any detector that takes it) comes from the model's preprocessing;
- detectors that need fitting are fitted once per model on the benchmark's training split (ID
  samples only, never a test set), from **one** pass shared by all (``fit_logits``,
  ``fit_features``, ``fit_feature_maps``; others by their own ``fit(loader)``); with
  ``cache_dir`` that pass is kept per model weights (:mod:`logitnorm_plugin.evaluation.fit_cache`)
  and a rerun, even with new detectors, fits without a pass over the training split;
- every row carries the registry name of the detector, ``ACC`` and ``ECE`` (the host puts ACC on
  cached-logits rows only and labels detectors by class name), and both FPR95 conventions
  (``FPR95TPR``: pytorch-ood's, OOD positive; ``FPR95-ID95``: the paper's, ID positive);
- with a :class:`~logitnorm_plugin.store.results.ResultStore`, each (model, detector, dataset)
cell is
  committed when it completes and a rerun skips finished cells; a model whose cells are all
  finished is not even loaded.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple, Union

import torch
from pytorch_ood.api import Detector, GradientDetector, LogitsDetector
from pytorch_ood.detector import ODIN
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from logitnorm_plugin._core import provenance as provenance_module
from logitnorm_plugin._core.conventions import DEFAULT_DETECTORS, ID_DATASET
from logitnorm_plugin._core.device import resolve_device
from logitnorm_plugin._core.digests import config_hash, state_dict_sha256
from logitnorm_plugin._core.model_groups import CONFIG_FIELD, GROUP_FIELD, model_group_fields
from logitnorm_plugin.evaluation import feeds
from logitnorm_plugin.evaluation.fit_cache import FitCache, pass_config
from logitnorm_plugin.evaluation.protocol import (
    check_defined,
    paper_subsample_indices,
    protocol_metrics,
)
from logitnorm_plugin.evaluation.request import EvaluateRequest
from logitnorm_plugin.evaluation.specs import (
    BenchmarkData,
    DetectorSpec,
    ModelSpec,
    evaluation_config,
    parse_detectors,
    resolve_benchmark,
    resolve_models,
)
from logitnorm_plugin.metrics import accuracy, expected_calibration_error
from logitnorm_plugin.store.results import ResultStore

__all__ = ["evaluate", "run_evaluation"]


# -- data passes -------------------------------------------------------------------------------


def _batches(dataset: Dataset, batch_size: int, device, num_workers: int = 0):
    """``(x, y)`` batches on ``device`` (``y`` as an int64 tensor), in dataset order."""
    if hasattr(dataset, "batches"):
        yield from dataset.batches(batch_size, device=device)
        return
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), torch.as_tensor(y)


def _odin_from_forward(det: ODIN, model: nn.Module, x: Tensor, logits: Tensor, retain: bool):
    """ODIN's score from a forward pass that was run with ``x`` requiring gradients.

    The same steps as :func:`pytorch_ood.detector.odin_preprocessing` and ``ODIN.predict``
    (gradient of the criterion at the temperature-scaled prediction, signed, divided by the
    normalisation std, one step of size eps, then the scaled max softmax), except that the first
    forward pass is the one shared with the logits detectors. Called by :func:`_forward_pass`
    outside inference mode with gradients enabled, whatever the caller's context.
    """
    scaled = logits / det.temperature
    target = scaled.max(dim=1).indices
    (gradient,) = torch.autograd.grad(det.criterion(scaled, target), x, retain_graph=retain)
    gradient = gradient.sign()
    if det.norm_std:
        std = torch.tensor(det.norm_std, dtype=gradient.dtype, device=gradient.device)
        gradient = gradient / std.view(1, -1, *([1] * (gradient.ndim - 2)))
    x_hat = x.detach() - det.eps * gradient
    with torch.no_grad():
        out = model(x_hat) / det.temperature
    return -out.softmax(dim=1).max(dim=1).values


@dataclass
class _Pass:
    logits: Tensor  # N x C on the device
    labels: Tensor  # N, int64, on the CPU
    scores: Dict[str, Tensor]  # detector key -> N scores (fused ODIN and input detectors)


def _forward_pass(
    model: nn.Module,
    dataset: Dataset,
    device,
    batch_size: int,
    fused: Mapping[str, ODIN],
    inputs: Mapping[str, Detector],
    num_workers: int = 0,
    split: feeds.SplitForward | None = None,
    shared: Mapping[str, Tuple[Detector, feeds.Feed]] | None = None,
    blame: feeds.Blame | None = None,
) -> _Pass:
    """One pass over ``dataset``: logits for every logits detector, fused ODIN scores, the
    scores of ``shared`` (features and backbone) detectors from the same forward, through
    ``split`` when given, and the scores of input detectors (gradient detectors other than
    ODIN, sampling detectors, the caller's feature detectors, ...); ``blame`` names a detector
    whose own call fails.

    Fused ODIN works under ``torch.inference_mode()`` and ``torch.no_grad()`` too, as
    pytorch-ood's ODIN does (without its warning): the gradient part leaves inference mode and
    enables gradients, on a normal copy of a batch created in inference mode. It still needs
    model parameters created outside inference mode; a clear error says so otherwise.
    """
    logits, labels = [], []
    shared = shared or {}
    forward = model if split is None else split
    scores: Dict[str, List[Tensor]] = {k: [] for k in (*fused, *shared, *inputs)}
    for x, y in _batches(dataset, batch_size, device, num_workers):
        if fused:
            with torch.inference_mode(False), torch.enable_grad():
                if torch.is_inference(x):
                    x = x.clone()  # an inference tensor cannot require gradients
                x = x.detach().requires_grad_(True)
                keys = list(fused)
                try:
                    z = forward(x)
                    for i, key in enumerate(keys):
                        s = _odin_from_forward(fused[key], model, x, z, retain=i < len(keys) - 1)
                        scores[key].append(s.detach())
                except RuntimeError as exc:
                    if "nference tensor" not in str(exc):
                        raise
                    raise RuntimeError(
                        f"ODIN ({', '.join(keys)}) needs gradients through the model, but its "
                        f"parameters or buffers were created under torch.inference_mode(); "
                        f"create or move the model outside inference mode (the evaluation "
                        f"itself may run inside it) [{exc}]"
                    ) from exc
            z = z.detach()
            x = x.detach()
        else:
            with torch.no_grad():
                z = forward(x)
        for key, value in feeds.shared_scores(shared, split, blame).items() if shared else ():
            scores[key].append(value.detach())
        for key, det in inputs.items():
            scores[key].append(blame.score(key, det.predict, x).detach())
        logits.append(z)
        labels.append(y)  # moved to the CPU once at the end: no host sync per batch
    if not logits:
        raise ValueError(f"dataset {dataset!r} is empty")
    return _Pass(
        logits=torch.cat(logits),
        labels=torch.cat([torch.as_tensor(y).to(logits[0].device) for y in labels]).to(
            "cpu", torch.int64
        ),
        scores={k: torch.cat(v) for k, v in scores.items()},
    )


# -- the engine --------------------------------------------------------------------------------


def _same_device(model: nn.Module, device: torch.device) -> bool:
    tensors = list(model.parameters()) or list(model.buffers())
    if not tensors:
        return True
    current = tensors[0].device
    if device.type != current.type:
        return False
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return current.index == index
    return True


class _Borrowed:
    """Detector instances given by the caller that hold the caller's model use the evaluated
    one (a copy on another device) for the duration, and get their own back afterwards."""

    def __init__(self, requests, model: nn.Module, net: nn.Module):
        self.swapped = []
        if net is model:
            return
        for request in requests:
            det = request.instance
            if det is not None and getattr(det, "model", None) is model:
                self.swapped.append(det)
        self.model, self.net = model, net

    def __enter__(self):
        for det in self.swapped:
            det.model = self.net
        return self

    def __exit__(self, *exc):
        for det in self.swapped:
            det.model = self.model
        return False


class _EvaluationModel:
    """The model to evaluate: the caller's own when it is already on ``device`` (its training
    flag is restored afterwards), else a copy on ``device``; in eval mode either way."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.original = model
        self.device = device
        self.was_training = model.training
        self.copied = not _same_device(model, device)
        self.model = copy.deepcopy(model).to(device) if self.copied else model

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        if not self.copied:
            self.original.train(self.was_training)
        return False


def _progress(iterable, enabled: bool, **kwargs):
    # disable=None: bars only on a terminal
    return tqdm(iterable, disable=None if enabled else True, leave=False, **kwargs)


def _say_without_terminal(enabled: bool, text: str) -> None:
    """A progress line where no bar shows (stderr is not a terminal: a log, CI)."""
    if enabled and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        tqdm.write(text, file=sys.stderr)



def evaluate(
    models,
    benchmark,
    detectors=DEFAULT_DETECTORS,
    *,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 256,
    seed: int = 0,
    store=None,
    force: bool = False,
    progress: bool = True,
    protocol: str = "full",
    repetitions: int = 10,
    data_root: str | None = None,
    download: bool = False,
    benchmark_kwargs: Mapping[str, Any] | None = None,
    keep_scores: Union[bool, Callable[[ModelSpec], bool]] = False,
    scores_out: Dict[Tuple[str, str, str], Tensor] | None = None,
    num_workers: int = 0,
    provenance: Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> List[Dict[str, Any]]:
    """
    Evaluate models on a benchmark with pytorch-ood's metrics; one row per
    (model, detector, OOD set).

    :param models: a dict label -> model or spec; a list of specs; or one spec. A spec is an
        ``nn.Module``, a :class:`~logitnorm_plugin.evaluation.specs.ModelSpec`, a pytorch-ood
        registry key (e.g. ``"wrn-40-2/cifar10/logitnorm/s0"``, evaluated with its own registry
        preprocessing), or a folder written by :func:`logitnorm_plugin.train`
    :param benchmark: a registered benchmark name, or any pytorch-ood ``Benchmark`` instance
    :param detectors: registry names (``logitnorm-ood list detectors``), classes, instances,
        ``(name, kwargs)`` pairs, or a dict name -> kwargs. Detectors built by name get
        ``norm_std`` from the model's preprocessing where they take one (ODIN) and the model's
        training temperature where their class declares ``training_t_parameter`` (the
        ``logitnorm`` detector). Instances are used as they are (their model must be the
        evaluated one on ``device``)
    :param device: where models run: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``; the
        caller's model is not moved (a copy is)
    :param batch_size: samples per forward pass
    :param seed: seed of a named benchmark's generated sets and of the paper protocol's
        subsampling
    :param store: a :class:`~logitnorm_plugin.store.results.ResultStore` (or a path to one): each
        cell is committed when done, finished cells are read back instead of recomputed
    :param force: recompute cells that the store already has
    :param progress: show progress bars (on a terminal)
    :param protocol: ``"full"`` (every OOD sample) or ``"paper"`` (the LogitNorm paper's
        protocol: OOD subsampled to a fifth of the ID test size, ``repetitions`` seeded draws,
        metrics averaged; computed from the same scores, no extra forward passes)
    :param repetitions: draws of the paper protocol
    :param data_root: data folder of a named benchmark
    :param download: let a named benchmark download missing data
    :param benchmark_kwargs: further arguments of a named benchmark
    :param keep_scores: keep the per-sample scores (``True``, or a predicate on the
        :class:`~logitnorm_plugin.evaluation.specs.ModelSpec`); they go to ``scores_out`` and to
        the store
    :param scores_out: dict filled with ``(model label, detector, dataset) -> scores`` (CPU);
        the ID test set's scores use the dataset name ``"ID"``
    :param num_workers: DataLoader workers for datasets without a ``batches`` fast path
    :param provenance: the run's provenance record (default:
        :func:`logitnorm_plugin._core.provenance.collect`); stored once per call
    :param cache_dir: folder of the fit cache (:mod:`logitnorm_plugin.evaluation.fit_cache`, in its
        ``fit-cache/``): the training split's pass for fitting is kept there per model weights
        and read back by a rerun; ``None`` (default): nothing is written
    :return: list of dicts with the keys of
        :data:`~logitnorm_plugin._core.conventions.ROW_KEYS`, ordered by model, detector, dataset
    """
    return run_evaluation(EvaluateRequest(
        models=models, benchmark=benchmark, detectors=detectors, device=device,
        batch_size=batch_size, seed=seed, store=store, force=force, progress=progress,
        protocol=protocol, repetitions=repetitions, data_root=data_root, download=download,
        benchmark_kwargs=benchmark_kwargs, keep_scores=keep_scores, scores_out=scores_out,
        num_workers=num_workers, provenance=provenance, cache_dir=cache_dir,
    ))


def run_evaluation(request: EvaluateRequest) -> List[Dict[str, Any]]:
    """What :func:`evaluate` does, for a request built once: see there."""
    r = request
    device = resolve_device(r.device)
    specs = resolve_models(r.models, r.download)
    detector_specs = parse_detectors(r.detectors)
    bench = resolve_benchmark(r.benchmark, data_root=r.data_root, download=r.download,
                              seed=r.seed, **(r.benchmark_kwargs or {}))
    run_config = evaluation_config(bench, r.protocol, r.repetitions, r.seed)
    store, own_store = r.store, False
    if store is not None and not hasattr(store, "put"):

        store, own_store = ResultStore(store), True
    try:
        job = _Evaluation(
            request=r, bench=bench, detectors=detector_specs, device=device, store=store,
            config_id=config_hash(run_config),
            fit_cache=FitCache(r.cache_dir) if r.cache_dir is not None else None,
        )
        if store is not None:

            store.register_config(job.config_id, {**run_config, "groups": bench.groups})
            record = dict(r.provenance) if r.provenance is not None else \
                provenance_module.collect(device=device, config=run_config)
            job.run_id = store.start_run(record)
        rows: List[Dict[str, Any]] = []
        for spec in _progress(specs, r.progress and len(specs) > 1, desc="evaluate",
                              unit="model"):
            rows.extend(job.model_rows(spec))
        return rows
    finally:
        if own_store:
            store.close()


@dataclass
class _Evaluation:
    """One call of :func:`evaluate`: the request, and what it resolved to."""

    request: EvaluateRequest
    bench: BenchmarkData
    detectors: List[DetectorSpec]
    device: torch.device
    store: Any
    config_id: str
    fit_cache: FitCache | None = None
    run_id: int | None = None

    def row_labels(self, spec: ModelSpec, detector: str, dataset: str) -> Dict[str, Any]:
        groups = self.bench.groups.items()
        return {
            "Model": spec.label,
            "Loss": spec.loss,
            "Seed": spec.seed,
            "Arch": spec.arch,
            "Detector": detector,
            "Dataset": dataset,
            "Group": next((g for g, names in groups if dataset in names), None),
            "Benchmark": self.bench.name,
            "Protocol": self.request.protocol,
            **model_group_fields(spec.model_config()),
            # the run folder, for the report's reliability diagrams and logit-norm curves
            **({"Run": spec.extra["path"]} if spec.extra.get("path") else {}),
        }

    def model_rows(self, spec: ModelSpec) -> List[Dict[str, Any]]:
        """The rows of one model: stored cells read back, the others computed."""
        extras = [d.model_kwargs(spec, self.bench.std) for d in self.detectors]
        keys = [d.key(e) for d, e in zip(self.detectors, extras)]
        cells = [(k, name) for k in keys for name in self.bench.ood_names]
        model_id = spec.model_id() if self.store is not None else None
        done: Dict[Tuple[str, str], Dict[str, Any]] = {}
        if self.store is not None and not self.request.force:
            done = self.store.cells(model_id, self.config_id)
            labels = self.row_labels(spec, "", "")
            if any(GROUP_FIELD not in row for row in done.values()) and GROUP_FIELD in labels:
                # cells stored before the model configuration was recorded: add it (and the
                # run folder), so that aggregation groups them by configuration from now on
                self.store.add_row_fields(model_id, {
                    k: labels[k] for k in (GROUP_FIELD, CONFIG_FIELD, "Run") if k in labels})
                done = self.store.cells(model_id, self.config_id)
        todo = {cell for cell in cells if cell not in done}
        results = {c: done[c] for c in cells if c in done}
        if todo:
            _say_without_terminal(self.request.progress, f"evaluate {spec.label}: "
                                  f"{len(todo)} of {len(cells)} cells to compute")
            work = _ModelWork(self, spec, model_id, extras, keys, todo)
            results.update(work.compute())
        rows = []
        for key, detector in zip(keys, self.detectors):
            for dataset in self.bench.ood_names:
                row = dict(results[(key, dataset)])
                # labels and metadata as given now (a stored cell may carry an older label)
                row.update(self.row_labels(spec, detector.row_name or detector.name, dataset))
                rows.append(row)
        return rows


@dataclass
class _ModelWork:
    """The cells of one model that still need computing, and how."""

    job: _Evaluation
    spec: ModelSpec
    model_id: str | None
    extras: List[Dict[str, Any]]
    keys: List[str]
    todo: set

    def compute(self) -> Dict[Tuple[str, str], Dict[str, Any]]:
        job, spec = self.job, self.spec
        model = spec.get_model()
        id_set, ood_sets = job.bench.sets(spec.mean, spec.std)
        needed = {k for k, _ in self.todo}
        self.name_of = {k: d.row_name or d.name for k, d in zip(self.keys, job.detectors)}
        self.group_of = {k: d.group() for k, d in zip(self.keys, job.detectors)}
        blame = feeds.Blame({k: d.label for k, d in zip(self.keys, job.detectors)}, spec.label)
        self.keep = (job.request.keep_scores(spec) if callable(job.request.keep_scores)
                     else bool(job.request.keep_scores))
        with _EvaluationModel(model, job.device) as net, _Borrowed(job.detectors, model, net):
            detectors = self._build(net, needed)
            logits_dets = {
                k: d for k, d in detectors.items()
                if isinstance(d, LogitsDetector) and not isinstance(d, GradientDetector)
            }
            # exactly ODIN (a subclass may score differently) on the evaluated model
            fused = {k: d for k, d in detectors.items()
                     if feeds.fusable(d, net, spec.std or job.bench.std)}
            shared = {k: (d, self.feed_of[k]) for k, d in detectors.items()
                      if self.feed_of[k].kind in feeds.SHARED}
            inputs = {k: d for k, d in detectors.items()
                      if k not in logits_dets and k not in fused and k not in shared}
            # through the split only when some detector takes features or maps
            split = feeds.SplitForward(net) if feeds.uses_split(self.feed_of.values()) else None
            feeds.fit_all(detectors, self.feed_of,
                          lambda: job.bench.train_set(spec.mean, spec.std),
                          lambda train, maps: self._train_pass(net, train, split, maps),
                          job.request.batch_size, job.request.num_workers, blame)

            def forward(dataset, wanted: Iterable[str], where: str):
                wanted, blame.where = set(wanted), where
                if split is not None:
                    split.maps = any(self.feed_of[k].scored_from == feeds.MAPS for k in wanted)
                return _forward_pass(
                    net, dataset, job.device, job.request.batch_size,
                    {k: d for k, d in fused.items() if k in wanted},
                    {k: d for k, d in inputs.items() if k in wanted},
                    job.request.num_workers, split,
                    {k: v for k, v in shared.items() if k in wanted}, blame,
                )

            id_pass = forward(id_set, needed, "the ID test set")
            if not bool((id_pass.labels >= 0).all()):
                raise ValueError(f"the ID test set of {job.bench.name} has labels < 0")
            id_metrics = {
                "ACC": accuracy(id_pass.logits, id_pass.labels),
                "ECE": expected_calibration_error(id_pass.logits, id_pass.labels),
            }
            id_scores = {k: _scores(k, d, id_pass, blame) for k, d in detectors.items()}
            self._keep_scores(ID_DATASET, id_scores)
            results = {}
            sets = list(zip(job.bench.ood_names, ood_sets))
            for dataset, ood_set in _progress(sets, job.request.progress,
                                              desc=f"evaluate {spec.label}"):
                wanted = [k for k in detectors if (k, dataset) in self.todo]
                if not wanted:
                    continue
                ood_pass = forward(ood_set, wanted, f"the OOD set {dataset!r}")
                ood_scores = {k: _scores(k, detectors[k], ood_pass, blame) for k in wanted}
                self._keep_scores(dataset, ood_scores)
                subsets = None
                if job.request.protocol == "paper":
                    subsets = paper_subsample_indices(
                        len(ood_pass.labels), len(id_pass.labels), job.request.repetitions,
                        job.request.seed,
                    )
                for key in wanted:
                    results[(key, dataset)] = self._cell(
                        key, dataset, id_pass.labels, id_scores[key], ood_scores[key],
                        id_metrics, subsets,
                    )
                del ood_pass, ood_scores
        return results

    def _build(self, net: nn.Module, needed: set) -> Dict[str, Detector]:
        detectors: Dict[str, Detector] = {}
        self.feed_of: Dict[str, feeds.Feed] = {}
        for key, spec, extra in zip(self.keys, self.job.detectors, self.extras):
            if key not in needed:
                continue
            if spec.instance is not None:
                detectors[key] = spec.instance
                self.feed_of[key] = feeds.instance_feed(spec.instance)
            else:
                kwargs = {**spec.kwargs, **extra}
                self.feed_of[key], parts = feeds.plan(spec.cls, kwargs)
                detectors[key] = feeds.build(spec.cls, net, {**kwargs, **parts}, spec.label)
        return detectors

    def _train_pass(self, net, train, split, maps: bool) -> Dict[str, Tensor]:
        """The training split's pass for fitting
        (:func:`~logitnorm_plugin.evaluation.feeds.train_data`),
        read from the fit cache when it has it."""
        job = self.job

        def compute():
            with feeds.keeping(split, maps):
                data = _forward_pass(net, train, job.device, job.request.batch_size, {}, {},
                                     job.request.num_workers, split)
            return feeds.train_data(data.logits, data.labels, split)

        if job.fit_cache is None:
            return compute()
        config = pass_config(state_dict_sha256(net), job.bench.config, self.spec.mean,
                             self.spec.std, len(train) if hasattr(train, "__len__") else None,
                             "model" if split is None else split.parts.kind, job.device)
        return job.fit_cache.fetch(config, feeds.pass_names(split, maps), compute, job.device)

    def _cell(self, key, dataset, id_labels, id_scores, ood_scores, id_metrics, subsets):
        """Metrics of one (detector, OOD set), committed to the store when there is one."""
        job = self.job
        # every sample of an OOD set is OOD, whatever label its dataset carries
        ood_labels = torch.full((ood_scores.shape[0],), -1, dtype=torch.int64)
        for where, scores in (("the ID test set", id_scores),
                              (f"the OOD set {dataset!r}", ood_scores)):
            check_defined(scores, self.name_of[key], where, self.spec.label)
        row = job.row_labels(self.spec, self.name_of[key], dataset)
        row.update(protocol_metrics(id_scores, id_labels, ood_scores, ood_labels, subsets))
        row.update(id_metrics)
        if job.store is not None:
            job.store.put(row, model_id=self.model_id, config_id=job.config_id,
                          detector_id=key, run_id=job.run_id, detector_group=self.group_of[key])
        return row

    def _keep_scores(self, dataset: str, scores: Dict[str, Tensor]) -> None:
        if not self.keep:
            return
        job = self.job
        for key, values in scores.items():
            cpu = values.detach().to("cpu", torch.float32)
            if job.request.scores_out is not None:
                job.request.scores_out[(self.spec.label, self.name_of[key], dataset)] = cpu
            if job.store is not None:
                job.store.put_scores(self.model_id, job.config_id, key, dataset, cpu)


def _scores(key: str, det: Detector, data: _Pass, blame: feeds.Blame) -> Tensor:
    if key in data.scores:
        return data.scores[key]
    with torch.no_grad():
        return blame.score(key, det.predict_logits, data.logits).detach()
