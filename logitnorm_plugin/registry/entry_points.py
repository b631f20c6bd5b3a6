"""Name lookup for losses, detectors and benchmarks through Python entry points.

Three entry-point groups are read with :mod:`importlib.metadata`:

==========================  ========================================================
``pytorch_ood.losses``      training objectives, ``loss(logits, target) -> Tensor``
``pytorch_ood.detectors``   OOD detectors (pytorch-ood ``Detector`` subclasses)
``pytorch_ood.benchmarks``  benchmarks (pytorch-ood ``Benchmark`` subclasses)
==========================  ========================================================

Any installed distribution can add names, for example in its ``pyproject.toml``::

    [project.entry-points."pytorch_ood.detectors"]
    my_method = "my_package.detector:MyDetector"

Rules:

* Names are case-insensitive and ``-`` equals ``_`` (``Cross-Entropy`` finds ``cross_entropy``).
* Listing reads entry-point metadata only: it imports and builds nothing. Only the entry that is
  asked for is imported.
* A class is accepted wherever a name is.
* An entry point whose value is malformed, or whose import fails when listed with
  ``verify=True`` (as ``logitnorm-ood list`` does), is reported by a warning that names its
  distribution, and skipped; the other names keep working. Asking for such an entry by name
  raises :class:`RegistryLoadError` with the cause. "Fails" includes a plugin module that calls
  ``sys.exit()`` while it is imported (``SystemExit`` is caught and reported like any error);
  ``KeyboardInterrupt`` is never caught, so Ctrl-C still stops the program.
* What an entry point names is checked when it is loaded (see :data:`KIND_RULES`): a detector
  must be a subclass of ``pytorch_ood.api.Detector``, a benchmark a subclass of
  ``pytorch_ood.benchmark.Benchmark``, a loss a class whose instances are callable as
  ``loss(logits, target)`` (normally a ``torch.nn.Module``), an architecture (group
  :data:`ARCHITECTURE_GROUP`) a ``torch.nn.Module`` subclass. Anything else (a function, an
  instance, an unrelated class) raises :class:`EntryPointKindError` naming the entry point, its
  value, its distribution and what it should be, instead of failing later inside a benchmark;
  listing with ``verify=True`` skips it with a warning.
* A distribution whose metadata has no ``Name`` (a damaged install) is skipped with a warning
  that names its folder: its entry points cannot be attributed, and the other names keep
  working. One whose ``entry_points.txt`` or ``METADATA`` cannot be read at all (a line
  without ``=``, bytes that are not UTF-8) is skipped the same way
  (:mod:`logitnorm_plugin._core.installed`).
* A third-party module that does not finish importing within the deadline of
  :mod:`logitnorm_plugin._core.deadline` fails to load like one that raises (named, skipped by
  listing), instead of hanging ``list`` or ``bench --detectors all``.
* **Duplicates are never resolved silently.** When two distributions declare the same name,
  listing warns and shows both; looking up the bare name raises
  :class:`AmbiguousNameError` naming both distributions, and the qualified form
  ``distribution:name`` (e.g. ``logitnorm-plugin:logitnorm``) selects one. Picking by
  install order would make results depend on ``sys.path``. A qualified name whose
  distribution does not declare the name raises :class:`UnknownDistributionError`, which lists
  the distributions that do.
* Setting the environment variable ``LOGITNORM_PLUGIN_NO_THIRD_PARTY=1`` ignores every
  distribution except this one (which also declares pytorch-ood's built-ins), for runs that
  must not depend on what else is installed.
* Results are cached; call :func:`refresh` after installing a package or changing ``sys.path``
  in a running process.
"""

import fnmatch
import functools
import importlib
import os
import re
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Dict, Iterable, List, Tuple, Union

from logitnorm_plugin._core import installed
from logitnorm_plugin._core.conventions import canonical_name
from logitnorm_plugin._core.deadline import ImportDeadlineError, import_deadline
from logitnorm_plugin._core.detector_text import parse_detector_text
from logitnorm_plugin._core.errors import UnknownNameError, UsageError, UserError, closest_match

#: kind -> entry-point group
GROUPS: Dict[str, str] = {
    "loss": "pytorch_ood.losses",
    "detector": "pytorch_ood.detectors",
    "benchmark": "pytorch_ood.benchmarks",
}

#: the entry-point group of architectures (:mod:`logitnorm_plugin.registry.architectures`);
#: not in :data:`GROUPS`: a card names an architecture by its dotted path, not by a name
ARCHITECTURE_GROUP = "pytorch_ood.models"

#: the distribution that ships this module
THIS_DISTRIBUTION = "logitnorm-plugin"

#: environment variable that switches off third-party entry points
NO_THIRD_PARTY_ENV = "LOGITNORM_PLUGIN_NO_THIRD_PARTY"

_VALUE_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class RegistryWarning(UserWarning):
    """A broken or duplicate entry point was skipped or reported."""


class RegistryLoadError(UserError, ImportError):
    """The entry point for a name exists, but importing it failed (an exception or
    ``sys.exit()`` in the plugin's module), or it names the wrong kind of object."""


class EntryPointKindError(RegistryLoadError, TypeError):
    """An entry point names something its group does not accept (see :data:`KIND_RULES`)."""


class UnknownDistributionError(UnknownNameError):
    """A qualified name ``distribution:name`` whose distribution does not declare ``name``.

    :param kind: e.g. ``"detector"``
    :param name: the canonical name asked for
    :param distribution: the distribution asked for
    :param declaring: the distributions that declare ``name``
    """

    def __init__(self, kind: str, name: str, distribution: str, declaring):
        self.kind, self.name, self.distribution = kind, name, distribution
        self.available = sorted(declaring)
        self.closest = closest_match(distribution, self.available)
        hint = f" Did you mean '{self.closest}:{name}'?" if self.closest else ""
        UserError.__init__(
            self,
            f"No distribution '{distribution}' declares the {kind} '{name}'.{hint} "
            f"Distributions that declare it: {', '.join(self.available)} "
            f"(qualify it as '<distribution>:{name}', or use the bare name '{name}' when "
            f"only one declares it)",
        )


class AmbiguousNameError(UserError, ValueError):
    """Two distributions declare the same name; a qualified name selects one."""


#: the canonical form of a name (:func:`logitnorm_plugin._core.conventions.canonical_name`)
normalize = canonical_name


def _normalize_distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_distribution_name = installed.distribution_name
_distribution_path = installed.distribution_path


def _describe_object(obj) -> str:
    where = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"
    if isinstance(obj, type):
        return f"the class {where}"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"the function {where}"
    return f"a {type(obj).__name__} object"


def _article(kind: str) -> str:
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def _is_loss(obj) -> bool:
    """A class whose instances are callable: a ``torch.nn.Module`` subclass that defines
    ``forward`` (the Module's own ``__call__`` only raises without one), or another class
    with ``__call__`` defined below ``object``."""
    if not isinstance(obj, type):
        return False
    mro = [k for k in obj.__mro__ if k is not object]
    # torch.nn.Module by name: loading a loss imports torch anyway, listing never gets here
    module = next((i for i, k in enumerate(mro)
                   if (k.__module__, k.__qualname__) == ("torch.nn.modules.module", "Module")),
                  None)
    if module is not None:
        return any("forward" in vars(k) or "__call__" in vars(k) for k in mro[:module])
    return any("__call__" in vars(k) for k in mro)


def _is_module_class(obj) -> bool:
    """A ``torch.nn.Module`` subclass (compared by name: no torch import for the check)."""
    return isinstance(obj, type) and any(
        (k.__module__, k.__qualname__) == ("torch.nn.modules.module", "Module")
        for k in obj.__mro__)


def _is_detector(obj) -> bool:
    from pytorch_ood.api import Detector

    return isinstance(obj, type) and issubclass(obj, Detector)


def _is_benchmark(obj) -> bool:
    from pytorch_ood.benchmark import Benchmark

    return isinstance(obj, type) and issubclass(obj, Benchmark)


#: kind -> (test of the loaded object, what an entry point of that kind must name). Checked
#: when an entry is loaded, never when names are listed (that would import every plugin).
KIND_RULES = {
    "loss": (
        _is_loss,
        "a class whose instances are called as loss(logits, target), normally a "
        "torch.nn.Module subclass that defines forward(logits, target) (it is built as "
        "cls(**kwargs))",
    ),
    "detector": (
        _is_detector,
        "a subclass of pytorch_ood.api.Detector (it is built as cls(model, **kwargs))",
    ),
    "benchmark": (
        _is_benchmark,
        "a subclass of pytorch_ood.benchmark.Benchmark (it is built as cls(root=..., "
        "download=..., seed=..., **kwargs))",
    ),
    # not a kind of GROUPS: a model card names an architecture by its dotted path
    # (logitnorm_plugin.registry.architectures); its entries are kind-checked all the same
    "architecture": (
        _is_module_class,
        "a torch.nn.Module subclass (a model card builds it as cls(**arch_kwargs))",
    ),
}


@dataclass(frozen=True)
class Entry:
    """One registered name: where it points and which distribution supplied it."""

    #: canonical name, e.g. ``"msp"``
    name: str
    #: kind, one of :data:`KIND_RULES`' keys
    kind: str
    #: ``"module:attribute"``
    value: str
    #: the supplying distribution's name, e.g. ``"logitnorm-plugin"``
    distribution: str
    #: its version
    version: str

    @property
    def qualified_name(self) -> str:
        return f"{self.distribution}:{self.name}"

    def load(self) -> type:
        """Import and return the class the entry points to.

        :raises RegistryLoadError: if the import raises (``SystemExit`` included; only
            ``KeyboardInterrupt`` and other non-``Exception`` signals pass through) or a
            third-party module runs past its import deadline
            (:mod:`logitnorm_plugin._core.deadline`)
        :raises EntryPointKindError: if the object is not what the group requires
            (:data:`KIND_RULES`)
        """
        module_name, _, attribute = self.value.partition(":")
        # a third-party import that never ends is reported by name (_core.deadline)
        deadline = 0 if self.distribution == THIS_DISTRIBUTION else None
        try:
            with import_deadline(f"the module {module_name!r}", deadline):
                obj = importlib.import_module(module_name)
            for part in attribute.split("."):
                obj = getattr(obj, part)
        except (Exception, SystemExit, ImportDeadlineError) as exc:  # any failure of a plugin
            raise RegistryLoadError(
                f"{self.kind} '{self.name}' from distribution '{self.distribution}' "
                f"({self.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        accepts, expected = KIND_RULES[self.kind]
        if not accepts(obj):
            raise EntryPointKindError(
                f"{self.kind} '{self.name}' from distribution '{self.distribution}' "
                f"({self.value}) is {_describe_object(obj)}, but {_article(self.kind)} entry "
                f"point must name {expected}"
            )
        return obj


def entry_from(kind: str, ep: metadata.EntryPoint) -> "Entry | None":
    """The :class:`Entry` of one entry point (its distribution ``"unknown"`` when its
    metadata has no ``Name``), or ``None`` when its value is not ``module:attribute``."""
    value = ep.value.replace(" ", "")
    if not _VALUE_PATTERN.match(value):
        return None
    dist = getattr(ep, "dist", None)
    version = str(dist.metadata.get("Version") or "unknown") if dist else "unknown"
    return Entry(normalize(ep.name), kind, value, _distribution_name(dist) or "unknown",
                 version)


@dataclass(frozen=True)
class _Index:
    #: canonical name -> entries declaring it (several only for duplicates)
    by_name: Dict[str, Tuple[Entry, ...]]


def build_index(kind: str, entry_points: Iterable[metadata.EntryPoint]) -> _Index:
    """Index entry points of one kind by canonical name.

    A pure function of its input (tests pass real :class:`importlib.metadata.EntryPoint`
    objects). Malformed values are warned about and skipped; the same distribution listing
    the same name twice (e.g. found twice on ``sys.path``) counts once. The entry points of a
    distribution without a ``Name`` in its metadata are skipped with one warning naming its
    folder.
    """
    by_name: Dict[str, List[Entry]] = {}
    nameless: Dict[str, List[str]] = {}
    for ep in entry_points:
        dist = getattr(ep, "dist", None)
        if dist is not None and _distribution_name(dist) is None:
            nameless.setdefault(_distribution_path(dist), []).append(ep.name)
            continue
        dist_name = _distribution_name(dist) if dist is not None else "unknown"
        version = str(dist.metadata.get("Version") or "unknown") if dist else "unknown"
        if not _VALUE_PATTERN.match(ep.value.replace(" ", "")):
            warnings.warn(
                f"Skipping {kind} entry point '{ep.name} = {ep.value}' of distribution "
                f"'{dist_name}': the value must look like 'package.module:Class'.",
                RegistryWarning,
                stacklevel=2,
            )
            continue
        entry = Entry(normalize(ep.name), kind, ep.value.replace(" ", ""), dist_name, version)
        same = by_name.setdefault(entry.name, [])
        if not any(e.distribution == entry.distribution for e in same):
            same.append(entry)
    for path, names in nameless.items():
        warnings.warn(
            f"Skipping the distribution at {path}: its METADATA has no 'Name', so its {kind} "
            f"entry points ({', '.join(names)}) cannot be attributed; reinstall or remove that "
            f"package.",
            RegistryWarning,
            stacklevel=2,
        )
    return _Index({name: tuple(entries) for name, entries in by_name.items()})


def _third_party_disabled() -> bool:
    return os.environ.get(NO_THIRD_PARTY_ENV, "").strip().lower() not in ("", "0", "false")


def group_entry_points(group: str) -> List[metadata.EntryPoint]:
    """The entry points of ``group``: only this distribution's while :data:`NO_THIRD_PARTY_ENV`
    is set (an entry point of a distribution without a ``Name`` counts as third-party). A
    distribution whose metadata cannot be read (a line of ``entry_points.txt`` without ``=``,
    bytes that are not UTF-8) is skipped with a :class:`RegistryWarning` naming it
    (:mod:`logitnorm_plugin._core.installed`); with :data:`NO_THIRD_PARTY_ENV` set, the files of
    other distributions are not even read."""
    keep = (lambda name: name == THIS_DISTRIBUTION) if _third_party_disabled() else None
    return installed.group_entry_points(group, keep, RegistryWarning)


@functools.cache
def _index(kind: str) -> _Index:
    if kind not in GROUPS:
        raise UnknownNameError("registry kind", kind, GROUPS, closest_match(kind, GROUPS))
    index = build_index(kind, group_entry_points(GROUPS[kind]))
    for name, entries in index.by_name.items():
        if len(entries) > 1:
            warnings.warn(
                f"{kind} '{name}' is declared by several distributions: "
                f"{', '.join(e.distribution for e in entries)}; use a qualified name such as "
                f"'{entries[0].qualified_name}' to choose one.",
                RegistryWarning,
                stacklevel=3,
            )
    return index


def refresh() -> None:
    """Forget cached entry points, e.g. after installing a package or changing ``sys.path``."""
    importlib.invalidate_caches()
    _index.cache_clear()


def entries(kind: str, pattern: str | None = None) -> List[Entry]:
    """All entries of ``kind`` (duplicates included), optionally filtered by a wildcard pattern
    (``fnmatch`` syntax, case-insensitive), sorted by name then distribution. Imports nothing."""
    found = [e for group in _index(kind).by_name.values() for e in group]
    if pattern is not None:
        found = [e for e in found if fnmatch.fnmatchcase(e.name, normalize(pattern))]
    return sorted(found, key=lambda e: (e.name, e.distribution))


def _list(kind: str, pattern: str | None, verify: bool) -> List[str]:
    names = []
    for entry in entries(kind, pattern):
        if verify:
            try:
                entry.load()
            except RegistryLoadError as exc:
                warnings.warn(f"Skipping: {exc}", RegistryWarning, stacklevel=3)
                continue
        if entry.name not in names:
            names.append(entry.name)
    return names


def list_losses(pattern: str | None = None, verify: bool = False) -> List[str]:
    """
    Names of the registered training objectives.

    :param pattern: optional wildcard filter, e.g. ``"*entropy*"``
    :param verify: import each entry and skip (with a warning) those that fail to load
    :return: sorted canonical names
    """
    return _list("loss", pattern, verify)


def list_detectors(pattern: str | None = None, verify: bool = False) -> List[str]:
    """
    Names of the registered OOD detectors. See :func:`list_losses` for the parameters.
    """
    return _list("detector", pattern, verify)


def list_benchmarks(pattern: str | None = None, verify: bool = False) -> List[str]:
    """
    Names of the registered benchmarks. See :func:`list_losses` for the parameters.
    """
    return _list("benchmark", pattern, verify)


def get_entry(kind: str, name: str) -> Entry:
    """
    The entry registered for ``name`` (or ``distribution:name``), without importing it.

    :raises UnknownNameError: listing the available names and the closest match
    :raises UnknownDistributionError: for ``distribution:name`` when ``name`` exists but that
        distribution does not declare it (lists the distributions that do)
    :raises AmbiguousNameError: if several distributions declare the bare name
    """
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a string or a class, got {type(name).__name__}")
    distribution = None
    if ":" in name:
        distribution, _, name = name.rpartition(":")
        distribution = _normalize_distribution(distribution.strip())
    by_name = _index(kind).by_name
    key = normalize(name)
    candidates = by_name.get(key, ())
    if distribution is not None and candidates:
        declaring = [e.distribution for e in candidates]
        candidates = tuple(e for e in candidates if e.distribution == distribution)
        if not candidates:
            raise UnknownDistributionError(kind, key, distribution, declaring)
    if not candidates:
        available = sorted(by_name)
        raise UnknownNameError(kind, name, available, closest_match(key, available))
    if len(candidates) > 1:
        raise AmbiguousNameError(
            f"{kind} '{key}' is declared by several distributions "
            f"({', '.join(e.distribution for e in candidates)}); choose one with a qualified "
            f"name: {', '.join(repr(e.qualified_name) for e in candidates)}"
        )
    return candidates[0]


def _get_class(kind: str, name_or_class: Union[str, type]) -> type:
    if isinstance(name_or_class, type):
        return name_or_class
    return get_entry(kind, name_or_class).load()


def name_of(kind: str, cls: type) -> str:
    """
    The registered name of ``cls`` (its class name when no entry points to it). Only entries
    whose attribute has the class's name are imported to compare.
    """
    for entry in entries(kind):
        if entry.value == f"{cls.__module__}:{cls.__qualname__}":
            return entry.name
    # entries may name the public import path (pytorch_ood.detector:X, not ...softmax:X)
    for entry in entries(kind):
        if entry.value.rpartition(":")[2] == cls.__qualname__:
            try:
                if entry.load() is cls:
                    return entry.name
            except RegistryLoadError:  # a broken third-party entry must not stop us
                continue
    return cls.__name__


def get_loss_class(name: Union[str, type]) -> type:
    """
    The training objective registered as ``name`` (a class is returned unchanged).

    :raises UnknownNameError: for an unknown name (lists names and the closest match)
    """
    return _get_class("loss", name)


def get_detector_class(name: Union[str, type]) -> type:
    """
    The detector registered as ``name`` (a class is returned unchanged).

    :raises UnknownNameError: for an unknown name (lists names and the closest match)
    """
    return _get_class("detector", name)


def get_benchmark_class(name: Union[str, type]) -> type:
    """
    The benchmark registered as ``name`` (a class is returned unchanged).

    :raises UnknownNameError: for an unknown name (lists names and the closest match)
    """
    return _get_class("benchmark", name)


def create_loss(name: Union[str, type], model=None, **kwargs):
    """
    Build the training objective registered as ``name``.

    An objective that needs parts of the model (ELogitNorm: the final layer) declares them in
    ``model_parts`` and gets them from ``model``'s split
    (:func:`logitnorm_plugin.registry.split.build_loss`); every other objective ignores ``model``.

    :param name: registered name (e.g. ``"logitnorm"``, ``"cross_entropy"``) or a class
    :param model: the classifier being trained (DDP / ``torch.compile`` wrappers are unwrapped)
    :param kwargs: constructor arguments, e.g. ``t=0.04``
    :raises MissingModelPartsError: the objective needs model parts and ``model`` is ``None``
    """
    from logitnorm_plugin.registry.split import (
        build_loss,  # lazy: listing names never imports torch
    )

    return build_loss(get_loss_class(name), model, **kwargs)


def create_detector(name: Union[str, type], model, **kwargs):
    """
    Build the detector registered as ``name`` around ``model``.

    :param name: registered name (e.g. ``"msp"``, ``"logitnorm"``), a name with settings as on
        the command line (``"knn(k=5)"``) or a class
    :param model: the classifier, passed as the detector's first argument; for feature-based
        detectors (``encoder``/``backbone`` parameters) split by
        :mod:`logitnorm_plugin.registry.split`
    :param kwargs: further constructor arguments, e.g. ``t=0.04``; a detector that declares
        ``training_t_parameter`` (``logitnorm``) gets the model's ``training_t`` (set by
        :func:`~logitnorm_plugin.load_trained`) unless it is given here
    """
    # lazy: listing and name look-ups stay torch-free; the split needs torch
    from logitnorm_plugin.registry.split import build_detector

    if isinstance(name, str):
        name, written = parse_detector_text(name)
        both = sorted(set(written) & set(kwargs))
        if both:
            raise UsageError(f"detector {name!r}: {', '.join(both)} given both in its name and "
                             "as keyword arguments; give each setting once")
        kwargs = {**written, **kwargs}
    cls = get_detector_class(name)
    t_parameter = getattr(cls, "training_t_parameter", None)
    if t_parameter and t_parameter not in kwargs and getattr(model, "training_t", None):
        # a model of load_trained carries its training temperature: use it, as evaluate does
        kwargs[t_parameter] = model.training_t
    return build_detector(cls, model, **kwargs)


def get_benchmark(name: Union[str, type], **kwargs):
    """
    Build the benchmark registered as ``name``.

    :param name: registered name (e.g. ``"digits"``, ``"cifar10"``) or a class
    :param kwargs: constructor arguments, e.g. ``root="data/"``, ``download=True``
    """
    return get_benchmark_class(name)(**kwargs)


# --- what ``logitnorm-ood list`` shows ------------------------------------------------------
