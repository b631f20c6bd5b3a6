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
  for every OOD set). ODIN (exactly :class:`pytorch_ood.detector.ODIN`) reuses that forward pass
  for its input gradient, so it adds one backward and one forward per batch instead of two
  forwards and a backward; other gradient or input detectors run their own pass over the same
  batches in the same order;
- ``norm_std`` of ODIN (and any detector that takes it) comes from the model's preprocessing;
- detectors that need fitting are fitted on the benchmark's training set (logits detectors from
  one forward pass, with ``fit_logits``);
- every row carries the registry name of the detector, ``ACC`` and ``ECE`` (the host puts ACC on
  cached-logits rows only and labels detectors by class name), and both FPR95 conventions
  (``FPR95TPR``: pytorch-ood's, OOD positive; ``FPR95-ID95``: the paper's, ID positive);
- with a :class:`~logitnorm_plugin.store.ResultStore`, each (model, detector, dataset) cell is
  committed when it completes and a rerun skips finished cells; a model whose cells are all
  finished is not even loaded.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import sys
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple, Union

import torch
from pytorch_ood.api import Detector, GradientDetector, LogitsDetector
from pytorch_ood.detector import ODIN
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from logitnorm_plugin.errors import MissingDataError, UnknownNameError, closest_match
from logitnorm_plugin.metrics import (
    OPENOOD_FPR_KEY,
    PAPER_AUPR_KEY,
    PAPER_FPR_KEY,
    accuracy,
    expected_calibration_error,
    ood_metrics,
)

__all__ = [
    "DEFAULT_DETECTORS",
    "ROW_KEYS",
    "ModelSpec",
    "BenchmarkData",
    "evaluate",
    "resolve_model",
    "resolve_benchmark",
    "model_fingerprint",
    "config_id",
    "evaluation_config",
    "paper_subsample_indices",
]

#: the detectors evaluated when none are named
DEFAULT_DETECTORS = ("msp", "energy", "maxlogit", "logitnorm", "odin")

#: keys of every result row, in table order
ROW_KEYS = (
    "Model", "Loss", "Seed", "Arch", "Detector", "Dataset", "Group", "Benchmark", "Protocol",
    "AUROC", "AUTC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", PAPER_FPR_KEY, PAPER_AUPR_KEY,
    OPENOOD_FPR_KEY, "ACC", "ECE",
)

#: pytorch-ood registry method names -> this package's loss names
REGISTRY_LOSS_NAMES = {
    "crossentropy": "cross_entropy",
    "logitnorm": "logitnorm",
    "oe": "outlier_exposure",
    "energy": "energy_regularized",
    "entropic": "entropic_open_set",
    "vos": "vos",
}

# the name under which the in-distribution test set's scores are kept
ID_DATASET = "ID"


# -- models ------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """A model to evaluate, with what is known about it.

    Give either ``model`` or ``load`` (called only when some cell still needs computing).

    :param label: the ``Model`` field of the rows
    :param model: the classifier
    :param load: builds the classifier on demand (e.g. reads a checkpoint)
    :param loss: training objective (registry name), the ``Loss`` field
    :param seed: training seed, the ``Seed`` field
    :param arch: architecture name, e.g. ``"wrn-40-2"``
    :param mean: per-channel input mean the model was trained with (pixels in [0, 1])
    :param std: per-channel input std; also ODIN's ``norm_std``
    :param t: LogitNorm temperature the model was trained with (default of the ``logitnorm``
        detector for this model)
    :param identity: stable identity for the result store; default: SHA-256 of the weights
    :param source: ``"module"``, ``"registry"`` or ``"run"``
    """

    label: str
    model: nn.Module | None = None
    load: Callable[[], nn.Module] | None = None
    loss: str | None = None
    seed: int | None = None
    arch: str | None = None
    mean: Tuple[float, ...] | None = None
    std: Tuple[float, ...] | None = None
    t: float | None = None
    identity: str | None = None
    source: str = "module"
    extra: Dict[str, Any] = field(default_factory=dict)

    def get_model(self) -> nn.Module:
        if self.model is None:
            if self.load is None:
                raise ValueError(f"model spec '{self.label}' has neither a model nor a loader")
            self.model = self.load()
        return self.model

    def model_id(self) -> str:
        """The store key: ``identity`` if given, else a fingerprint of the weights."""
        if self.identity is None:
            self.identity = "weights:" + model_fingerprint(self.get_model())
        return self.identity


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's class and state dict (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    cls = type(model)
    digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _seed_number(seed) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, int):
        return seed
    text = str(seed).lstrip("sS")
    return int(text) if text.isdigit() else None


def _registry_weights(entry, download: bool):
    """Load a registry entry's model; offline without the cached file is a clear error."""
    from pathlib import Path

    from pytorch_ood.model import registry

    cached = Path(torch.hub.get_dir()) / "checkpoints" / entry.file_name
    if not cached.is_file() and not download:
        raise MissingDataError(
            f"The weights of '{entry.key}' are not cached: expected {cached}. To get them, "
            f"pass --download (download=True), or download {entry.url} to that path."
        )
    try:
        return registry.load_model(entry.key, map_location="cpu")
    except OSError as exc:  # URLError, connection errors: no network
        raise MissingDataError(
            f"Downloading the weights of '{entry.key}' from {entry.url} failed ({exc}); "
            f"place the file at {cached} to use it offline."
        ) from exc


def _registry_spec(key: str, download: bool = False) -> ModelSpec:
    from pathlib import Path

    from pytorch_ood.model import registry

    try:
        entry = registry.get_model_info(key)
    except ValueError as exc:
        known = registry.list_models()
        if "ambiguous" in str(exc):
            raise UnknownNameError(
                "model", key, [k for k in known if k.startswith(key + "/")],
                closest=None,
            ) from exc
        raise UnknownNameError("model", key, known, closest_match(key, known)) from exc
    pre = entry.preprocessing
    mean = tuple(pre.mean) if pre is not None and hasattr(pre, "mean") else None
    std = tuple(pre.std) if pre is not None and hasattr(pre, "std") else None
    loss = REGISTRY_LOSS_NAMES.get(entry.loss, entry.loss)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / entry.file_name
    if not download and not cached.is_file():
        _registry_weights(entry, download=False)  # raises the MissingDataError, before any work
    return ModelSpec(
        label=entry.key,
        load=lambda: _registry_weights(entry, download),
        loss=loss,
        seed=_seed_number(entry.seed),
        arch=entry.arch,
        mean=mean,
        std=std,
        t=0.04 if loss == "logitnorm" else None,  # the registry's LogitNorm weights use 0.04
        identity=f"pytorch-ood:{entry.key}:{entry.sha256[:16]}",
        source="registry",
        extra={"dataset": entry.dataset},
    )


def _run_spec(path: str) -> ModelSpec:
    """A run folder of :func:`logitnorm_plugin.train.train`: the model and its card's loss,
    seed, architecture, preprocessing and LogitNorm temperature."""
    from logitnorm_plugin.train import load_trained

    model, card = load_trained(path, return_card=True)
    pre = card.get("preprocessing") or {}
    t = card.get("t")
    return ModelSpec(
        label=str(card.get("key") or os.path.basename(os.path.normpath(path))),
        model=model,
        loss=card.get("loss"),
        seed=_seed_number(card.get("seed")),
        arch=card.get("arch"),
        mean=tuple(pre["mean"]) if pre.get("mean") is not None else None,
        std=tuple(pre["std"]) if pre.get("std") is not None else None,
        t=float(t) if t is not None else None,
        source="run",
        extra={"path": os.path.abspath(path), "sha256": card.get("sha256")},
    )


def resolve_model(spec, label: str | None = None, download: bool = False) -> ModelSpec:
    """A :class:`ModelSpec` from a spec, a module, a trainer run folder or a registry key.

    :param spec: :class:`ModelSpec`; ``nn.Module``; a path to a folder written by
        :func:`logitnorm_plugin.train.train`; or a pytorch-ood registry key such as
        ``"wrn-40-2/cifar10/logitnorm/s0"`` (loaded with its own registry preprocessing)
    :param label: overrides the ``Model`` field
    :param download: let a registry key download its weights (else they must be cached in
        ``$TORCH_HOME/hub/checkpoints``)
    :raises UnknownNameError: for a string that is neither a path nor a registry key
    :raises MissingDataError: for registry weights that are not cached, without ``download``
    """
    if isinstance(spec, ModelSpec):
        resolved = spec
    elif isinstance(spec, nn.Module):
        resolved = ModelSpec(label=label or type(spec).__name__, model=spec)
    elif isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        resolved = _run_spec(text) if os.path.exists(text) else _registry_spec(text, download)
    else:
        raise TypeError(f"cannot evaluate a {type(spec).__name__}; pass a model or a model spec")
    if label is not None:
        resolved.label = label
    return resolved


def _resolve_models(models, download: bool = False) -> List[ModelSpec]:
    if isinstance(models, Mapping):
        specs = [resolve_model(spec, str(name), download) for name, spec in models.items()]
    elif isinstance(models, (str, os.PathLike, nn.Module, ModelSpec)):
        specs = [resolve_model(models, download=download)]
    else:
        specs = [resolve_model(spec, download=download) for spec in models]
    labels = [s.label for s in specs]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ValueError(f"model labels must be unique, got {duplicates} more than once")
    return specs


# -- benchmarks --------------------------------------------------------------------------------


@dataclass
class BenchmarkData:
    """What the engine needs from a benchmark: the sets, their names, groups and config.

    :param name: the ``Benchmark`` field of the rows
    :param benchmark: the pytorch-ood benchmark instance
    :param ood_names: names of the OOD sets, in order
    :param groups: group name -> OOD set names (e.g. near/far); empty when none
    :param config: what identifies the benchmark's data in the result store
    """

    name: str
    benchmark: Any
    ood_names: List[str]
    groups: Dict[str, List[str]]
    config: Dict[str, Any]
    mean: Tuple[float, ...] | None = None
    std: Tuple[float, ...] | None = None
    _views: Dict[Any, Tuple[Dataset, List[Dataset]]] = field(default_factory=dict)

    def sets(self, mean=None, std=None) -> Tuple[Dataset, List[Dataset]]:
        """ID test set and OOD sets, normalised with ``mean``/``std`` where that is possible."""
        key = None
        if mean is not None and std is not None and self.mean is not None:
            if tuple(mean) != tuple(self.mean) or tuple(std) != tuple(self.std):
                key = (tuple(mean), tuple(std))
        if key not in self._views:
            self._views[key] = self._build_sets(key)
        return self._views[key]

    def _build_sets(self, key) -> Tuple[Dataset, List[Dataset]]:
        bench = self.benchmark
        if key is not None and hasattr(bench, "with_preprocessing"):
            bench = bench.with_preprocessing(*key)
            key = None
        if hasattr(bench, "id_test_set") and hasattr(bench, "ood_sets"):
            id_set, ood = bench.id_test_set(), list(bench.ood_sets())
        else:
            id_set = bench.test_sets(known=True, unknown=False)[0]
            ood = list(bench.test_sets(known=False, unknown=True))
        if key is not None:
            if hasattr(id_set, "with_normalization") and all(
                hasattr(d, "with_normalization") for d in ood
            ):
                id_set = id_set.with_normalization(*key)
                ood = [d.with_normalization(*key) for d in ood]
            else:
                warnings.warn(
                    f"benchmark {self.name} cannot change its preprocessing; the model's "
                    f"mean/std {key} differ from the benchmark's and are not applied",
                    UserWarning,
                    stacklevel=4,
                )
        if len(ood) != len(self.ood_names):
            raise ValueError(
                f"benchmark {self.name} has {len(ood)} OOD sets but {len(self.ood_names)} names"
            )
        return id_set, ood

    def sizes(self) -> Dict[str, int]:
        """Number of samples of the ID test set (``"ID"``) and of each OOD set."""
        id_set, ood = self.sets()
        return {ID_DATASET: len(id_set), **{n: len(d) for n, d in zip(self.ood_names, ood)}}

    def train_set(self, mean=None, std=None) -> Dataset:
        bench = self.benchmark
        if mean is not None and std is not None and hasattr(bench, "with_preprocessing"):
            if self.mean is None or (tuple(mean), tuple(std)) != (self.mean, self.std):
                bench = bench.with_preprocessing(mean, std)
        return bench.train_set()


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def _groups_of(bench) -> Dict[str, List[str]]:
    groups = getattr(bench, "ood_groups", None)
    if groups:
        return {str(k): list(v) for k, v in groups.items()}
    near, far = getattr(bench, "_near_ood", None), getattr(bench, "_far_ood", None)
    if near or far:
        return {"near": list(near or []), "far": list(far or [])}
    return {}


def resolve_benchmark(
    benchmark,
    data_root: str | None = None,
    download: bool = False,
    seed: int = 0,
    **benchmark_kwargs,
) -> BenchmarkData:
    """Build or wrap a benchmark.

    :param benchmark: a registered name (``logitnorm-ood list benchmarks``), a benchmark class,
        or any pytorch-ood :class:`~pytorch_ood.benchmark.Benchmark` instance (its ID test set is
        ``test_sets(known=True, unknown=False)[0]``, its OOD sets ``test_sets(known=False)``)
    :param data_root: where the data lives (named benchmarks)
    :param download: allow downloads (named benchmarks)
    :param seed: seed of the benchmark's generated sets (named benchmarks)
    """
    if isinstance(benchmark, BenchmarkData):
        return benchmark
    name = None
    if isinstance(benchmark, (str, type)):
        from logitnorm_plugin.registry import get_benchmark_class, normalize

        cls = get_benchmark_class(benchmark)
        name = normalize(benchmark) if isinstance(benchmark, str) else cls.__name__
        benchmark = cls(root=data_root, download=download, seed=seed, **benchmark_kwargs)
    cls = type(benchmark)
    name = name or getattr(benchmark, "name", None) or cls.__name__
    ood_names = [str(n) for n in benchmark.ood_names]
    pre = getattr(benchmark, "preprocessing", None)
    if isinstance(pre, Mapping):
        mean, std = pre.get("mean"), pre.get("std")
    else:
        mean, std = getattr(pre, "mean", None), getattr(pre, "std", None)
    config = {
        "benchmark": str(name),
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "seed": getattr(benchmark, "seed", seed),
        "kwargs": {k: _jsonable(v) for k, v in sorted(benchmark_kwargs.items())},
        "ood_names": ood_names,
    }
    return BenchmarkData(
        name=str(name),
        benchmark=benchmark,
        ood_names=ood_names,
        groups=_groups_of(benchmark),
        config=config,
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
    )


# -- detectors ---------------------------------------------------------------------------------


@dataclass
class _DetectorRequest:
    name: str  # registry name, the rows' Detector field
    cls: type
    kwargs: Dict[str, Any]
    instance: Detector | None = None

    def key(self, extra: Mapping[str, Any]) -> str:
        """Identity in the store: name, plus the arguments that change its scores."""
        args = {**self.kwargs, **extra}
        if self.instance is not None and self.instance.hyperparameter_space:
            try:
                args.update(self.instance.get_hyperparameters())
            except AttributeError:
                pass
        args = {k: _jsonable(v) for k, v in sorted(args.items()) if k != "norm_std"}
        return self.name if not args else f"{self.name}{json.dumps(args, sort_keys=True)}"


def _registered_name(cls: type) -> str:
    from logitnorm_plugin.registry import name_of

    return name_of("detector", cls)


def _parse_detectors(detectors) -> List[_DetectorRequest]:
    from logitnorm_plugin.registry import get_detector_class, normalize

    if isinstance(detectors, (str, Detector, type)):
        detectors = [detectors]
    items: List[Tuple[Any, Dict[str, Any]]] = []
    if isinstance(detectors, Mapping):
        items = [(k, dict(v or {})) for k, v in detectors.items()]
    else:
        for d in detectors:
            if isinstance(d, tuple):
                items.append((d[0], dict(d[1] if len(d) > 1 else {})))
            else:
                items.append((d, {}))
    requests = []
    for what, kwargs in items:
        if isinstance(what, Detector):
            cls = type(what)
            requests.append(_DetectorRequest(_registered_name(cls), cls, kwargs, what))
        elif isinstance(what, type):
            requests.append(_DetectorRequest(_registered_name(what), what, kwargs))
        else:
            cls = get_detector_class(what)
            name = normalize(what.rpartition(":")[2])
            requests.append(_DetectorRequest(name, cls, kwargs))
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        raise ValueError(f"each detector may be named once, got {names}")
    if not requests:
        raise ValueError("at least one detector is needed")
    return requests


def _accepts(cls: type, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def _auto_kwargs(request: _DetectorRequest, spec: ModelSpec, std) -> Dict[str, Any]:
    """Arguments the engine fills in from the model: ODIN's norm_std, LogitNorm's t."""
    extra = {}
    if request.instance is None:
        if std is not None and "norm_std" not in request.kwargs and _accepts(
            request.cls, "norm_std"
        ):
            extra["norm_std"] = [float(s) for s in std]
        if (
            request.name == "logitnorm"
            and spec.t is not None
            and "t" not in request.kwargs
            and _accepts(request.cls, "t")
        ):
            extra["t"] = float(spec.t)
    return extra


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
    forward pass is the one shared with the logits detectors.
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
) -> _Pass:
    """One pass over ``dataset``: logits for every logits detector, fused ODIN scores, and the
    scores of input detectors (gradient detectors other than ODIN, feature detectors, ...)."""
    logits, labels = [], []
    scores: Dict[str, List[Tensor]] = {k: [] for k in (*fused, *inputs)}
    for x, y in _batches(dataset, batch_size, device, num_workers):
        if fused:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                z = model(x)
                keys = list(fused)
                for i, key in enumerate(keys):
                    s = _odin_from_forward(fused[key], model, x, z, retain=i < len(keys) - 1)
                    scores[key].append(s.detach())
            z = z.detach()
            x = x.detach()
        else:
            with torch.no_grad():
                z = model(x)
        for key, det in inputs.items():
            scores[key].append(det.predict(x).detach())
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


# -- protocol ----------------------------------------------------------------------------------


def paper_subsample_indices(
    n_ood: int, n_id: int, repetitions: int = 10, seed: int = 0
) -> List[Tensor]:
    """The LogitNorm paper's OOD subsampling: ``repetitions`` seeded draws of ``n_id // 5`` OOD
    samples each (2,000 for a 10,000-image ID test set), from
    :func:`logitnorm_plugin.data.subsample_ood` (a pure function of its arguments).

    :return: one int64 index tensor per repetition
    """
    from logitnorm_plugin.data import paper_ood_size, subsample_ood

    k = max(1, paper_ood_size(n_id))
    return [torch.from_numpy(i) for i in subsample_ood(n_ood, k, repeats=repetitions, seed=seed)]


def _metrics_for(
    id_scores: Tensor,
    id_labels: Tensor,
    ood_scores: Tensor,
    ood_labels: Tensor,
    subsets: List[Tensor] | None,
) -> Dict[str, float]:
    if subsets is None:
        return ood_metrics(torch.cat([id_scores, ood_scores]), torch.cat([id_labels, ood_labels]))
    runs = []
    for idx in subsets:
        idx_dev = idx.to(ood_scores.device)
        runs.append(
            ood_metrics(
                torch.cat([id_scores, ood_scores[idx_dev]]),
                torch.cat([id_labels, ood_labels[idx]]),
            )
        )
    return {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}


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
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal
    return tqdm(iterable, disable=None if enabled else True, leave=False, **kwargs)


def config_id(config: Mapping[str, Any]) -> str:
    """Short stable hash of a benchmark + protocol configuration."""
    text = json.dumps(config, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def evaluation_config(
    bench: BenchmarkData, protocol: str = "full", repetitions: int = 10, seed: int = 0
) -> Dict[str, Any]:
    """What identifies an evaluation's cells besides model and detector: the benchmark's data
    and the protocol (see :func:`config_id`)."""
    run_config = dict(bench.config)
    # the set sizes tell other data under the same names apart (e.g. a tiny fixture)
    run_config["sizes"] = bench.sizes()
    run_config["protocol"] = protocol
    if protocol == "paper":
        run_config.update(repetitions=repetitions, subsample_seed=seed, ood_size="id_test/5")
    return run_config


def evaluate(
    models,
    benchmark,
    detectors=DEFAULT_DETECTORS,
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
) -> List[Dict[str, Any]]:
    """
    Evaluate models on a benchmark with pytorch-ood's metrics; one row per
    (model, detector, OOD set).

    :param models: a dict label -> model or spec; a list of specs; or one spec. A spec is an
        ``nn.Module``, a :class:`ModelSpec`, a pytorch-ood registry key (e.g.
        ``"wrn-40-2/cifar10/logitnorm/s0"``, evaluated with its own registry preprocessing), or a
        folder written by :func:`logitnorm_plugin.train.train`
    :param benchmark: a registered benchmark name, or any pytorch-ood ``Benchmark`` instance
    :param detectors: registry names (``logitnorm-ood list detectors``), classes, instances,
        ``(name, kwargs)`` pairs, or a dict name -> kwargs. Detectors built by name get
        ``norm_std`` from the model's preprocessing where they take one (ODIN) and, for
        ``logitnorm``, the model's training temperature ``t`` when known. Instances are used as
        they are (their model must be the evaluated one on ``device``)
    :param device: where models run; the caller's model is not moved (a copy is)
    :param batch_size: samples per forward pass
    :param seed: seed of a named benchmark's generated sets and of the paper protocol's
        subsampling
    :param store: a :class:`~logitnorm_plugin.store.ResultStore` (or a path to one): each cell
        is committed when done, finished cells are read back instead of recomputed
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
        :class:`ModelSpec`); they go to ``scores_out`` and to the store
    :param scores_out: dict filled with ``(model label, detector, dataset) -> scores`` (CPU);
        the ID test set's scores use the dataset name ``"ID"``
    :param num_workers: DataLoader workers for datasets without a ``batches`` fast path
    :param provenance: the run's provenance record (default:
        :func:`logitnorm_plugin.provenance.collect`); stored once per call
    :return: list of dicts with the keys :data:`ROW_KEYS`, ordered by model, detector, dataset
    """
    if protocol not in ("full", "paper"):
        raise ValueError(f"protocol must be 'full' or 'paper', got {protocol!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    specs = _resolve_models(models, download)
    requests = _parse_detectors(detectors)
    bench = resolve_benchmark(
        benchmark, data_root=data_root, download=download, seed=seed, **(benchmark_kwargs or {})
    )
    run_config = evaluation_config(bench, protocol, repetitions, seed)
    cfg_id = config_id(run_config)

    own_store = False
    if store is not None and not hasattr(store, "put"):
        from logitnorm_plugin.store import ResultStore

        store, own_store = ResultStore(store), True
    run_id = None
    try:
        if store is not None:
            from logitnorm_plugin import provenance as provenance_module

            store.register_config(cfg_id, {**run_config, "groups": bench.groups})
            record = dict(provenance) if provenance is not None else provenance_module.collect(
                device=device, config=run_config
            )
            run_id = store.start_run(record)
        rows: List[Dict[str, Any]] = []
        for spec in _progress(specs, progress and len(specs) > 1, desc="models"):
            rows.extend(
                _evaluate_model(
                    spec, bench, requests, device, batch_size, store, cfg_id, run_id, force,
                    progress, protocol, repetitions, seed, keep_scores, scores_out, num_workers,
                )
            )
        return rows
    finally:
        if own_store:
            store.close()


def _cell_row(spec: ModelSpec, bench: BenchmarkData, detector: str, dataset: str, protocol):
    group = next((g for g, names in bench.groups.items() if dataset in names), None)
    return {
        "Model": spec.label,
        "Loss": spec.loss,
        "Seed": spec.seed,
        "Arch": spec.arch,
        "Detector": detector,
        "Dataset": dataset,
        "Group": group,
        "Benchmark": bench.name,
        "Protocol": protocol,
    }


def _evaluate_model(
    spec: ModelSpec,
    bench: BenchmarkData,
    requests: List[_DetectorRequest],
    device: torch.device,
    batch_size: int,
    store,
    cfg_id: str,
    run_id,
    force: bool,
    progress: bool,
    protocol: str,
    repetitions: int,
    seed: int,
    keep_scores,
    scores_out,
    num_workers: int,
) -> List[Dict[str, Any]]:
    std = spec.std if spec.std is not None else bench.std
    extras = [_auto_kwargs(r, spec, std) for r in requests]
    keys = [r.key(e) for r, e in zip(requests, extras)]
    cells = [(k, d) for k in keys for d in bench.ood_names]
    model_id = spec.model_id() if store is not None else None
    done: Dict[Tuple[str, str], Dict[str, Any]] = {}
    if store is not None and not force:
        done = store.cells(model_id, cfg_id)
    todo = {cell for cell in cells if cell not in done}
    results: Dict[Tuple[str, str], Dict[str, Any]] = {c: done[c] for c in cells if c in done}
    keep = keep_scores(spec) if callable(keep_scores) else bool(keep_scores)
    if todo:
        results.update(
            _compute_cells(
                spec, bench, requests, extras, keys, todo, device, batch_size, store, cfg_id,
                model_id, run_id, progress, protocol, repetitions, seed, keep, scores_out,
                num_workers,
            )
        )
    rows = []
    for key, request in zip(keys, requests):
        for dataset in bench.ood_names:
            row = dict(results[(key, dataset)])
            # labels and metadata as given now (a stored cell may carry an older label)
            row.update(_cell_row(spec, bench, request.name, dataset, protocol))
            rows.append(row)
    return rows


def _compute_cells(
    spec, bench, requests, extras, keys, todo, device, batch_size, store, cfg_id, model_id,
    run_id, progress, protocol, repetitions, seed, keep, scores_out, num_workers,
) -> Dict[Tuple[str, str], Dict[str, Any]]:
    model = spec.get_model()
    id_set, ood_sets = bench.sets(spec.mean, spec.std)
    needed = {k for k, _ in todo}
    with _EvaluationModel(model, device) as net, _Borrowed(requests, model, net):
        detectors: Dict[str, Detector] = {}
        for key, request, extra in zip(keys, requests, extras):
            if key not in needed:
                continue
            if request.instance is not None:
                detectors[key] = request.instance
            else:
                from logitnorm_plugin.registry import create_detector

                detectors[key] = create_detector(
                    request.cls, net, **{**request.kwargs, **extra}
                )
        logits_dets = {
            k: d for k, d in detectors.items()
            if isinstance(d, LogitsDetector) and not isinstance(d, GradientDetector)
        }
        # exactly ODIN (a subclass may score differently) on the evaluated model
        fused = {k: d for k, d in detectors.items() if type(d) is ODIN and d.model is net}
        inputs = {k: d for k, d in detectors.items() if k not in logits_dets and k not in fused}
        _fit(logits_dets, inputs, bench, spec, net, device, batch_size, num_workers)

        def forward(dataset, wanted: Iterable[str]):
            wanted = set(wanted)
            return _forward_pass(
                net, dataset, device, batch_size,
                {k: d for k, d in fused.items() if k in wanted},
                {k: d for k, d in inputs.items() if k in wanted},
                num_workers,
            )

        id_pass = forward(id_set, needed)
        known = id_pass.labels >= 0
        if not bool(known.all()):
            raise ValueError(f"the ID test set of {bench.name} has labels < 0")
        acc = accuracy(id_pass.logits, id_pass.labels)
        ece = expected_calibration_error(id_pass.logits, id_pass.labels)
        id_scores = {k: _scores(k, d, id_pass) for k, d in detectors.items()}
        if keep:
            _keep(spec, store, model_id, cfg_id, ID_DATASET, id_scores, scores_out, requests, keys)

        results = {}
        sets = list(zip(bench.ood_names, ood_sets))
        for dataset, ood_set in _progress(sets, progress, desc=f"{spec.label}"):
            wanted = [k for k in detectors if (k, dataset) in todo]
            if not wanted:
                continue
            ood_pass = forward(ood_set, wanted)
            # every sample of an OOD set is OOD, whatever label its dataset carries
            ood_labels = torch.full_like(ood_pass.labels, -1)
            subsets = None
            if protocol == "paper":
                subsets = paper_subsample_indices(
                    len(ood_labels), len(id_pass.labels), repetitions, seed
                )
            ood_scores = {k: _scores(k, detectors[k], ood_pass) for k in wanted}
            if keep:
                _keep(spec, store, model_id, cfg_id, dataset, ood_scores, scores_out, requests,
                      keys)
            name_of = dict(zip(keys, (r.name for r in requests)))
            for key in wanted:
                row = _cell_row(spec, bench, name_of[key], dataset, protocol)
                row.update(
                    _metrics_for(
                        id_scores[key], id_pass.labels, ood_scores[key], ood_labels, subsets
                    )
                )
                row["ACC"] = acc
                row["ECE"] = ece
                if store is not None:
                    store.put(row, model_id=model_id, config_id=cfg_id, detector_id=key,
                              run_id=run_id)
                results[(key, dataset)] = row
            del ood_pass, ood_scores
    return results


def _scores(key: str, det: Detector, data: _Pass) -> Tensor:
    if key in data.scores:
        return data.scores[key]
    with torch.no_grad():
        return det.predict_logits(data.logits).detach()


def _keep(spec, store, model_id, cfg_id, dataset, scores, scores_out, requests, keys):
    name_of = dict(zip(keys, (r.name for r in requests)))
    for key, values in scores.items():
        cpu = values.detach().to("cpu", torch.float32)
        if scores_out is not None:
            scores_out[(spec.label, name_of[key], dataset)] = cpu
        if store is not None:
            store.put_scores(model_id, cfg_id, key, dataset, cpu)


def _fit(logits_dets, inputs, bench, spec, net, device, batch_size, num_workers):
    """Fit the detectors that need it on the benchmark's training set (one forward pass)."""
    need_logits = {k: d for k, d in logits_dets.items() if getattr(d, "requires_fit", False)}
    need_inputs = {k: d for k, d in inputs.items() if getattr(d, "requires_fit", False)}
    if not need_logits and not need_inputs:
        return
    train = bench.train_set(spec.mean, spec.std)
    if need_logits:
        fit_pass = _forward_pass(net, train, device, batch_size, {}, {}, num_workers)
        labels = fit_pass.labels.to(fit_pass.logits.device)
        for det in need_logits.values():
            det.fit_logits(fit_pass.logits, labels)
    for det in need_inputs.values():
        det.fit(DataLoader(train, batch_size=batch_size, shuffle=False, num_workers=num_workers))



class _CallableModule(types.ModuleType):
    """This module shares its name with its main function, which the package exports as
    ``logitnorm_plugin.evaluate``. Once the module has been imported, Python sets the package
    attribute to the module; making the module callable keeps ``logitnorm_plugin.evaluate(...)``
    working either way."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
