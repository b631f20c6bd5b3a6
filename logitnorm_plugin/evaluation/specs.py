"""What the evaluation engine evaluates: models, detectors and a benchmark, resolved from names.

- :class:`ModelSpec`: a model with what is known about it (label, training objective, seed,
  architecture, preprocessing, LogitNorm temperature, a stable identity for the result store),
  from an ``nn.Module``, a run folder of :func:`logitnorm_plugin.train` or a pytorch-ood
  registry key (:func:`resolve_model`);
- :class:`DetectorSpec`: a detector by registry name, class or instance, with the arguments
  that change its scores (:func:`parse_detectors`); the engine fills in what it knows from
  the model (ODIN's ``norm_std``; the training temperature of detectors that declare
  ``training_t_parameter``, such as :class:`~logitnorm_plugin.detector.LogitNormDetector`);
- :class:`BenchmarkData`: a benchmark's ID test set, OOD sets, groups and the configuration
  that identifies its data in the result store (:func:`resolve_benchmark`).
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Tuple

from pytorch_ood.api import Detector
from torch import nn
from torch.utils.data import Dataset

from logitnorm_plugin._core.conventions import (
    DEFAULT_T,
    ID_DATASET,
    REGISTRY_LOSS_NAMES,
    canonical_name,
    detector_label,
)
from logitnorm_plugin._core.detector_text import parse_detector_text
from logitnorm_plugin._core.digests import state_dict_sha256
from logitnorm_plugin._core.errors import (
    UsageError,
)
from logitnorm_plugin._core.model_groups import model_configuration
from logitnorm_plugin.registry import hub
from logitnorm_plugin.registry.entry_points import (
    RegistryLoadError,
    entries,
    get_benchmark_class,
    get_entry,
    name_of,
)
from logitnorm_plugin.training.runs import load_trained

__all__ = [
    "BenchmarkData",
    "DetectorSpec",
    "DuplicateModelLabelError",
    "ModelSpec",
    "check_unique_labels",
    "evaluation_config",
    "parse_detectors",
    "resolve_benchmark",
    "resolve_model",
    "resolve_models",
]

#: the detectors evaluated when none are named


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
    #: the configuration without the seed (what seeds are averaged over, see
    #: :mod:`logitnorm_plugin._core.model_groups`); default: from loss, arch and t
    configuration: Dict[str, Any] | None = None

    def get_model(self) -> nn.Module:
        if self.model is None:
            if self.load is None:
                raise ValueError(f"model spec '{self.label}' has neither a model nor a loader")
            self.model = self.load()
        return self.model

    def model_config(self) -> Dict[str, Any] | None:
        """The configuration seeds are averaged over: ``configuration``, else what is known
        (loss, arch, t, dataset); ``None`` when nothing is (the model is then its own group)."""
        if self.configuration is not None:
            return self.configuration
        if self.loss is None and self.arch is None:
            return None
        return model_configuration(arch=self.arch, loss=self.loss, t=self.t,
                                   dataset=self.extra.get("dataset"))

    def model_id(self) -> str:
        """The store key: ``identity`` if given, else a fingerprint of the weights."""
        if self.identity is None:
            self.identity = "weights:" + state_dict_sha256(self.get_model())
        return self.identity


def _seed_number(seed) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, int):
        return seed
    text = str(seed).lstrip("sS")
    return int(text) if text.isdigit() else None


def _registry_spec(key: str, download: bool = False) -> ModelSpec:
    entry = hub.registry_entry(key)
    pre = entry.preprocessing
    mean = tuple(pre.mean) if pre is not None and hasattr(pre, "mean") else None
    std = tuple(pre.std) if pre is not None and hasattr(pre, "std") else None
    loss = REGISTRY_LOSS_NAMES.get(entry.loss, entry.loss)
    if not download and not hub.registry_weights_path(entry).is_file():
        hub.load_registry_weights(entry, download=False)  # the MissingDataError, before any work
    return ModelSpec(
        label=entry.key,
        load=lambda: hub.load_registry_weights(entry, download),
        loss=loss,
        seed=_seed_number(entry.seed),
        arch=entry.arch,
        mean=mean,
        std=std,
        # the registry's LogitNorm weights were trained with the default temperature
        t=DEFAULT_T if loss == "logitnorm" else None,
        identity=f"pytorch-ood:{entry.key}:{entry.sha256[:16]}",
        source="registry",
        extra={"dataset": entry.dataset},
        configuration=model_configuration(source="pytorch-ood", arch=entry.arch,
                                          dataset=entry.dataset, loss=loss),
    )


def _run_spec(path: str) -> ModelSpec:
    """A run folder of :func:`logitnorm_plugin.train`: the model and its card's loss,
    seed, architecture, preprocessing and LogitNorm temperature."""

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
        configuration=model_configuration(card.get("config")) if card.get("config") else None,
    )


def resolve_model(spec, label: str | None = None, download: bool = False) -> ModelSpec:
    """A :class:`ModelSpec` from a spec, a module, a trainer run folder or a registry key.

    :param spec: :class:`ModelSpec`; ``nn.Module``; a path to a folder written by
        :func:`logitnorm_plugin.train`; or a pytorch-ood registry key such as
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


class DuplicateModelLabelError(UsageError):
    """Two models of one evaluation have the same label (results are keyed by it)."""


def _origin(spec: ModelSpec) -> str:
    """Where a model comes from, for messages: its run folder, registry key or label."""
    if spec.extra.get("path"):
        return str(spec.extra["path"])
    if spec.source == "registry":
        return f"registry entry {spec.label}"
    return f"model {spec.label!r}"


def resolve_models(models, download: bool = False) -> List[ModelSpec]:
    """Specs of a dict label -> spec, a list of specs, or one spec (see :func:`resolve_model`).

    :raises DuplicateModelLabelError: (a ``UsageError``: a ``UserError`` and ``ValueError``) if
        two models get the same label, e.g. two run folders whose model cards have the same key;
        it names the label and where each model comes from
    """
    if isinstance(models, Mapping):
        specs = [resolve_model(spec, str(name), download) for name, spec in models.items()]
    elif isinstance(models, (str, os.PathLike, nn.Module, ModelSpec)):
        specs = [resolve_model(models, download=download)]
    else:
        specs = [resolve_model(spec, download=download) for spec in models]
    check_unique_labels(specs)
    return specs


def check_unique_labels(specs: List[ModelSpec]) -> None:
    """Results are keyed by model label: two models of one evaluation need two labels.

    :raises DuplicateModelLabelError: naming the label and where each model comes from
    """
    labels = [s.label for s in specs]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        label = duplicates[0]
        origins = [_origin(s) for s in specs if s.label == label]
        raise DuplicateModelLabelError(
            f"{len(origins)} models have the label '{label}' ({'; '.join(origins)}), but each "
            "model of one evaluation needs its own label, or no table could tell them apart: "
            "evaluate them in separate runs (another --out), or label them yourself "
            "(--models LABEL=SPEC; in Python a dict {label: model})"
            + (f" (also given more than once: {', '.join(duplicates[1:])})"
               if len(duplicates) > 1 else "")
        )


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

        cls = get_benchmark_class(benchmark)
        name = canonical_name(benchmark) if isinstance(benchmark, str) else cls.__name__
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


def evaluation_config(
    bench: BenchmarkData, protocol: str = "full", repetitions: int = 10, seed: int = 0
) -> Dict[str, Any]:
    """What identifies an evaluation's cells besides model and detector: the benchmark's data
    and the protocol (its :func:`~logitnorm_plugin._core.digests.config_hash` is the store's
    configuration id)."""
    run_config = dict(bench.config)
    # the set sizes tell other data under the same names apart (e.g. a tiny fixture)
    run_config["sizes"] = bench.sizes()
    run_config["protocol"] = protocol
    if protocol == "paper":
        run_config.update(repetitions=repetitions, subsample_seed=seed, ood_size="id_test/5")
    return run_config


# -- detectors ---------------------------------------------------------------------------------


@dataclass
class DetectorSpec:
    """A detector to evaluate: its registry name, class, the caller's constructor arguments,
    the distribution whose entry point supplied it and, for a detector given as an instance,
    the instance.

    :meth:`model_kwargs` adds what the engine knows from the model: ``norm_std`` (ODIN and any
    detector taking it) from the model's preprocessing, and the model's training temperature for
    a detector class that names its parameter in ``training_t_parameter`` (the plugin's
    ``logitnorm`` detector declares ``"t"``). The caller's arguments always win.

    Identity: :meth:`key` (the result store's ``detector_id``) is the full configuration:
    name, class with its module, distribution and every constructor argument, including those
    filled in from the model; :meth:`group` is the configuration without the model's part (what
    tables aggregate over seeds), and :attr:`label` its table label (``logitnorm``,
    ``logitnorm(t=1)``, ``fakeplug:logitnorm``).

    :param name: canonical registry name (the ``Detector`` field of :func:`evaluate`'s rows)
    :param display: the name as the caller qualified it (``"fakeplug:logitnorm"``), if so
    """

    name: str
    cls: type
    kwargs: Dict[str, Any]
    instance: Detector | None = None
    distribution: str | None = None
    display: str | None = None
    #: the ``Detector`` field of the rows: the name, or the label when one call evaluates two
    #: configurations of one name
    row_name: str | None = None

    def model_kwargs(self, spec: ModelSpec, default_std) -> Dict[str, Any]:
        """Constructor arguments filled in from the model (none for an instance).

        :param default_std: the benchmark's normalisation std, for a model without its own
        """
        extra: Dict[str, Any] = {}
        if self.instance is not None:
            return extra
        std = spec.std if spec.std is not None else default_std
        if std is not None and "norm_std" not in self.kwargs and _accepts(self.cls, "norm_std"):
            extra["norm_std"] = [float(s) for s in std]
        t_parameter = getattr(self.cls, "training_t_parameter", None)
        if (t_parameter and spec.t is not None and t_parameter not in self.kwargs
                and _accepts(self.cls, t_parameter)):
            extra[t_parameter] = float(spec.t)
        return extra

    def _own_args(self) -> Dict[str, Any]:
        args = dict(self.kwargs)
        if self.instance is not None and self.instance.hyperparameter_space:
            try:
                args.update(self.instance.get_hyperparameters())
            except AttributeError:
                pass
        return {k: _jsonable(v) for k, v in sorted(args.items())}

    @property
    def label(self) -> str:
        """The table label: name (as qualified by the caller) and the caller's arguments."""
        return detector_label(self.display or self.name, self._own_args())

    def _class_path(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"

    def key_for(self, spec: ModelSpec, default_std) -> str:
        """:meth:`key` of this detector on ``spec``'s model (see :meth:`model_kwargs`)."""
        return self.key(self.model_kwargs(spec, default_std))

    def key(self, extra: Mapping[str, Any]) -> str:
        """Identity in the store: canonical JSON of name, class, distribution and every
        argument (the caller's, the instance's hyperparameters, those ``extra`` fills in)."""
        args = {**self._own_args(), **{k: _jsonable(v) for k, v in extra.items()}}
        return json.dumps({"name": self.name, "class": self._class_path(),
                           "distribution": self.distribution,
                           "kwargs": dict(sorted(args.items()))},
                          sort_keys=True, separators=(",", ":"))

    def group(self) -> str:
        """What tables aggregate over models: :meth:`key` without the arguments taken from
        the model, plus the :attr:`label` (canonical JSON)."""
        return json.dumps({"label": self.label, "name": self.name, "class": self._class_path(),
                           "distribution": self.distribution, "kwargs": self._own_args()},
                          sort_keys=True, separators=(",", ":"))


def _registered(cls: type) -> Tuple[str, str | None]:
    """``(registered name, supplying distribution or None)`` of a detector class."""

    name = name_of("detector", cls)
    for entry in entries("detector"):
        if entry.name == name:
            try:
                if entry.load() is cls:
                    return name, entry.distribution
            except RegistryLoadError:
                continue
    return name, None


def _merged_settings(name: str, written: Mapping[str, Any], given: Mapping[str, Any]) -> dict:
    both = sorted(set(written) & set(given))
    if both:
        raise UsageError(f"detector {name!r}: {', '.join(both)} given both in its name and as "
                         "keyword arguments; give each setting once")
    return {**written, **given}


def parse_detectors(detectors) -> List[DetectorSpec]:
    """Detector specs of registry names (``"msp"``, ``"fakeplug:logitnorm"``), names with
    settings (``"knn(k=5)"``, the command line's spelling and the tables' label), classes,
    instances, ``(name, kwargs)`` pairs, or a dict name -> kwargs. One name may be given with
    several argument sets; each configuration (label) only once.

    :raises UnknownNameError: for an unknown name (lists the names and the closest match)
    :raises UsageError: for no detector, or a configuration given twice
    """

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
    specs = []
    for what, kwargs in items:
        if isinstance(what, (Detector, type)):
            cls = what if isinstance(what, type) else type(what)
            name, distribution = _registered(cls)
            specs.append(DetectorSpec(name, cls, kwargs, None if cls is what else what,
                                      distribution=distribution))
        else:
            what, written = parse_detector_text(what)  # "knn(k=5)": the CLI's spelling too
            kwargs = _merged_settings(what, written, kwargs)
            entry = get_entry("detector", what)
            display = f"{entry.distribution}:{entry.name}" if ":" in str(what) else None
            specs.append(DetectorSpec(entry.name, entry.load(), kwargs,
                                      distribution=entry.distribution, display=display))
    labels = [d.label for d in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"each detector configuration may be named once, got {labels}")
    if not specs:
        raise UsageError("at least one detector is needed")
    names = [d.name for d in specs]
    for d in specs:
        d.row_name = d.label if names.count(d.name) > 1 else d.name
    return specs
def _accepts(cls: type, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
