"""Network architectures by name.

Three architectures cover the benchmarks of the plugin:

- ``"wrn-40-2"``: :class:`pytorch_ood.model.WideResNet` (depth 40, widen factor 2, dropout 0.3),
  the network of the LogitNorm paper and of pytorch-ood's registry weights; 32 x 32 inputs only
  (its pooling is hard-coded).
- ``"resnet18-32x32"``: the CIFAR variant of ResNet-18 used by OpenOOD v1.5 (3 x 3 stem with
  stride 1, no max-pool), built as a subclass of :class:`pytorch_ood.model.ResNet18` so the
  state-dict keys are those of ``torchvision.models.resnet18``.
- ``"digits-cnn"``: a small CNN with BatchNorm after every convolution for the 1 x 8 x 8
  scikit-learn digits. LogitNorm needs the normalisation layers: without them the logits of a
  fresh network have a tiny norm and ``z / (t ||z||)`` gives gradients that do not train it.

:func:`arch_spec` returns the ``(arch_class, arch_kwargs)`` pair of pytorch-ood's
:class:`~pytorch_ood.model.ModelEntry`, so a checkpoint trained here can be published in (and
rebuilt by) pytorch-ood's model registry.

**A file never chooses code.** A model card names its class as a dotted path
(``arch_class``, as pytorch-ood's ``ModelEntry`` does), but :func:`resolve_class` resolves it
only through a closed table, never by importing what the string says:

- this package's architectures (:data:`ARCHS`);
- pytorch-ood's model classes (the ``nn.Module`` classes of ``pytorch_ood.model``:
  ``pytorch_ood.model.WideResNet``, ``...ResNet18``, ``...ResNet50``, ...);
- torchvision's classification models by builder name
  (``torchvision.models.<name>`` for each name of
  ``torchvision.models.list_models(module=torchvision.models)``), without pretrained
  ``weights`` (a card cannot make the loader download anything);
- architectures that an installed distribution declares in the entry-point group
  ``pytorch_ood.models`` (``my_net = "my_package.nets:MyNet"`` makes
  ``my_package.nets.MyNet`` loadable); ``LOGITNORM_PLUGIN_NO_THIRD_PARTY=1`` ignores them like
  every third-party entry point. Installing a package is the user's decision; a card's
  content is not. Such an entry is kind-checked like a detector's when it is loaded
  (``KIND_RULES["architecture"]`` of :mod:`~logitnorm_plugin.registry.entry_points`): it must
  name a ``torch.nn.Module`` subclass, so an entry ``evil = os:system`` is refused with
  :class:`~logitnorm_plugin.registry.entry_points.EntryPointKindError` before a card's
  ``arch_kwargs`` reach it.

Anything else (``os.system``, ``builtins.eval``, a module that happens to be importable) is
refused with :class:`~logitnorm_plugin._core.errors.UntrustedFileError`, before anything is
imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

import torch
from torch import nn

from logitnorm_plugin._core.conventions import canonical_name
from logitnorm_plugin._core.errors import (
    ModelIntegrityError,
    UnknownNameError,
    UntrustedFileError,
    UserError,
    closest_match,
    one_line,
)
from logitnorm_plugin.models import DigitsCNN, ResNet18CIFAR
from logitnorm_plugin.registry.entry_points import (
    ARCHITECTURE_GROUP,
    entry_from,
    group_entry_points,
)

__all__ = [
    "ARCHS",
    "ARCH_GROUP",
    "ArchEntry",
    "arch_display_name",
    "arch_spec",
    "build_arch",
    "build_arch_for_state",
    "build_arch_within",
    "build_model",
    "list_archs",
    "resolve_class",
    "trusted_arch_classes",
]

#: entry-point group in which installed distributions declare further architectures
ARCH_GROUP = ARCHITECTURE_GROUP


@dataclass(frozen=True)
class ArchEntry:
    """One architecture: a class given by dotted path plus default constructor arguments.

    Calling the entry builds a model: ``ARCHS["wrn-40-2"](num_classes=10)``.

    :param name: the architecture name
    :param arch_class: dotted path of the class (resolved lazily, as pytorch-ood does)
    :param defaults: constructor arguments other than ``num_classes`` / ``in_channels``
    :param input_size: spatial input size the network expects, ``None`` if any size works
    :param description: one line for listings
    """

    name: str
    arch_class: str
    defaults: Dict[str, Any] = field(default_factory=dict)
    input_size: Tuple[int, int] | None = None
    description: str = ""

    def spec(self, num_classes: int, in_channels: int = 3, **kwargs) -> Tuple[str, dict]:
        """``(arch_class, arch_kwargs)`` of a model of this architecture."""
        arch_kwargs = dict(num_classes=int(num_classes), **self.defaults)
        arch_kwargs["in_channels"] = int(in_channels)
        arch_kwargs.update(kwargs)
        return self.arch_class, arch_kwargs

    def __call__(self, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
        arch_class, arch_kwargs = self.spec(num_classes, in_channels, **kwargs)
        return resolve_class(arch_class)(**arch_kwargs)


ARCHS: Dict[str, ArchEntry] = {
    entry.name: entry
    for entry in (
        ArchEntry(
            "wrn-40-2",
            "pytorch_ood.model.WideResNet",
            {"depth": 40, "widen_factor": 2, "drop_rate": 0.3},
            (32, 32),
            "WideResNet-40-2 with dropout 0.3 (LogitNorm paper, pytorch-ood registry)",
        ),
        ArchEntry(
            "resnet18-32x32",
            f"{ResNet18CIFAR.__module__}.ResNet18CIFAR",
            {},
            None,
            "ResNet-18 with a 3x3 stride-1 stem and no max-pool (OpenOOD v1.5 CIFAR)",
        ),
        ArchEntry(
            "digits-cnn",
            f"{DigitsCNN.__module__}.DigitsCNN",
            {"width": 32, "drop_rate": 0.0},
            None,
            "3-conv CNN with BatchNorm for 1x8x8 digits (fast CPU benchmark)",
        ),
    )
}


def list_archs() -> list:
    """Sorted names of the architectures."""
    return sorted(ARCHS)


def _own_classes() -> Dict[str, Callable]:
    def loader(dotted):
        module_name, _, name = dotted.rpartition(".")
        return lambda: getattr(importlib.import_module(module_name), name)

    return {e.arch_class: loader(e.arch_class) for e in ARCHS.values()}


def _pytorch_ood_classes() -> Dict[str, Callable]:
    import pytorch_ood.model as host

    return {
        f"pytorch_ood.model.{name}": (lambda obj=obj: obj)
        for name in dir(host)
        if not name.startswith("_")
        and isinstance(obj := getattr(host, name), type) and issubclass(obj, nn.Module)
    }


def _torchvision_builders() -> Dict[str, Callable]:
    import torchvision

    return {
        f"torchvision.models.{name}": (
            lambda name=name: torchvision.models.get_model_builder(name)
        )
        for name in torchvision.models.list_models(module=torchvision.models)
    }


def _entry_point_classes() -> Dict[str, Callable]:
    """dotted path -> loader of each architecture entry point. A loader imports the entry
    through :meth:`~logitnorm_plugin.registry.entry_points.Entry.load`, which applies the kind
    rule (``KIND_RULES["architecture"]``: a ``torch.nn.Module`` subclass) before anything
    is returned, so ``evil = os:system`` is refused before a card can call it."""
    found = {}
    for ep in group_entry_points(ARCH_GROUP):
        entry = entry_from("architecture", ep)
        if entry is not None:
            found[entry.value.replace(":", ".")] = entry.load
    return found


def trusted_arch_classes(prefix: str | None = None) -> Dict[str, Callable]:
    """The closed table: dotted path -> a function returning the class (or torchvision
    builder). Imports only pytorch-ood, torchvision and the modules of this package; entry
    points are listed, not loaded.

    :param prefix: only the part of the table a path with this start can be in
    """
    table: Dict[str, Callable] = dict(_own_classes())
    if prefix is None or prefix.startswith("pytorch_ood.model."):
        table.update(_pytorch_ood_classes())
    if prefix is None or prefix.startswith("torchvision.models."):
        table.update(_torchvision_builders())
    table.update(_entry_point_classes())
    return table


def resolve_class(dotted_path: str, source: str | None = None) -> Callable:
    """The class (or torchvision builder) named ``dotted_path`` in the closed table of
    architectures (see the module's docstring); nothing outside it is ever imported.

    :param dotted_path: e.g. ``"pytorch_ood.model.WideResNet"``
    :param source: the file that asks for it, named in the error
    :raises UntrustedFileError: for a path outside the table
    """
    where = f" (asked for by {source!r})" if source else ""
    if not isinstance(dotted_path, str):
        raise UntrustedFileError(f"arch_class must be a dotted path string{where}, got "
                                 f"{type(dotted_path).__name__}")
    table = trusted_arch_classes(dotted_path)
    if dotted_path not in table:
        raise UntrustedFileError(
            f"architecture class {dotted_path[:120]!r}{where} is not in the table of known "
            "architectures (this package's, pytorch_ood.model's classes, torchvision's "
            f"classification models, entry points of the group '{ARCH_GROUP}'); refusing to "
            "build it. Only use model cards from sources you trust"
        )
    return table[dotted_path]()


def build_arch(arch_class: str, arch_kwargs: Dict[str, Any], source: str | None = None
               ) -> nn.Module:
    """Build ``arch_class(**arch_kwargs)`` through the closed table (:func:`resolve_class`),
    after checking that the arguments are plain keyword arguments (and, for torchvision, that
    they ask for no pretrained weights).

    :raises UntrustedFileError: class outside the table, or arguments that are not plain
    :raises UserError: arguments the class rejects
    """
    where = f" of {source!r}" if source else ""
    if not isinstance(arch_kwargs, dict) or not all(
        isinstance(k, str) and k.isidentifier() for k in arch_kwargs
    ):
        raise UntrustedFileError(f"arch_kwargs{where} must be a mapping of argument names")
    if str(arch_class).startswith("torchvision.") and any(
        arch_kwargs.get(k) is not None for k in ("weights", "weights_backbone")
    ):
        raise UntrustedFileError(
            f"arch_kwargs{where} ask torchvision for pretrained weights; a model card may not "
            "make the loader download anything"
        )
    cls = resolve_class(arch_class, source)
    try:
        model = cls(**arch_kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        # RuntimeError: torch's own refusal, e.g. a negative width ("negative dimension")
        raise UserError(
            f"architecture {arch_class!r} rejects the arguments "
            f"{one_line(arch_kwargs, 200)}{where}: {one_line(exc, 200)}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UntrustedFileError(f"{arch_class!r}{where} did not build a torch module")
    return model


def _shapes(tensors: Dict[str, Any]) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _skeleton(arch_class: str, arch_kwargs: Dict[str, Any], source: str | None) -> nn.Module:
    """:func:`build_arch` on the ``meta`` device: shapes only, no storage, no random numbers."""
    # imports first, outside the meta context: a module that makes tensors when it is
    # imported must not make them on the meta device
    resolve_class(arch_class, source)
    with torch.device("meta"):
        return build_arch(arch_class, arch_kwargs, source)


def build_arch_for_state(arch_class: str, arch_kwargs: Dict[str, Any], state: Dict[str, Any],
                         source: str | None = None) -> nn.Module:
    """:func:`build_arch`, but memory is allocated only for a network that ``state`` fits.

    The rule: **a file's numbers never choose how much memory is allocated.** A card's
    ``arch_kwargs`` (``width=9000``) could make the constructor allocate gigabytes before any
    check; so the network is first built on the ``meta`` device (shapes only, no storage),
    its state-dict keys and shapes are compared with ``state`` (the weights, whose size the
    file bounds), and only a network that matches is built for real.

    :param state: the state dict that will be loaded (tensors)
    :raises ModelIntegrityError: the state dict does not fit the architecture
    :raises UntrustedFileError, UserError: as :func:`build_arch`
    """
    skeleton = _skeleton(arch_class, arch_kwargs, source)
    expected, found = _shapes(skeleton.state_dict()), _shapes(state)
    if expected != found:
        where = f" of {source!r}" if source else ""
        differ = sorted(k for k in expected.keys() | found.keys()
                        if expected.get(k) != found.get(k))
        first = differ[0]
        raise ModelIntegrityError(
            f"the weights do not fit the architecture {arch_class!r}{where} with "
            f"{one_line(arch_kwargs, 160)}: {len(differ)} tensor(s) differ, e.g. "
            f"{first!r}: the architecture has {expected.get(first, 'no such tensor')}, the "
            f"weights {found.get(first, 'no such tensor')}; nothing was allocated"
        )
    return build_arch(arch_class, arch_kwargs, source)


def build_arch_within(arch_class: str, arch_kwargs: Dict[str, Any], budget: int | None,
                      source: str | None = None) -> nn.Module:
    """:func:`build_arch`, but only for a network whose parameters and buffers fit in
    ``budget`` bytes, measured on the ``meta`` device before anything is allocated.

    The trainer's side of :func:`build_arch_for_state`'s rule: without weights to compare with
    (a new run, or ``--resume`` on a folder whose ``config.json`` someone else wrote), a
    ``width=9000`` must be refused, not handed to the allocator (or the OOM killer).
    Building on ``meta`` draws no random numbers, so the real build's initial weights stay
    those of the seed.

    :param budget: the most bytes the network may take; ``None``: no limit
    :raises UserError: the network needs more than ``budget`` bytes, or rejects the arguments
    """
    skeleton = _skeleton(arch_class, arch_kwargs, source)
    need = sum(t.numel() * t.element_size()
               for t in (*skeleton.parameters(), *skeleton.buffers()))
    if budget is not None and need > budget:
        where = f" of {source!r}" if source else ""
        raise UserError(
            f"architecture {arch_class!r} with {one_line(arch_kwargs, 160)}{where} needs "
            f"{need / 2**30:.3g} GiB for its parameters and buffers, more than the "
            f"{budget / 2**30:.3g} GiB this device can give it; nothing was allocated"
        )
    return build_arch(arch_class, arch_kwargs, source)


def _entry(arch: str) -> ArchEntry:
    for entry in ARCHS.values():
        if canonical_name(entry.name) == canonical_name(arch):
            return entry
    raise UnknownNameError("architecture", str(arch), ARCHS, closest_match(str(arch), ARCHS))


def arch_display_name(arch: str) -> str:
    """The table's spelling of an architecture name (``WRN_40_2`` -> ``wrn-40-2``).

    :raises UnknownNameError: for an unknown architecture (with the closest name)
    """
    return _entry(arch).name


def arch_spec(arch: str, num_classes: int, in_channels: int = 3, **kwargs) -> Tuple[str, dict]:
    """The ``(arch_class, arch_kwargs)`` pair of pytorch-ood's ``ModelEntry`` for a model.

    ``build_arch(arch_class, arch_kwargs)`` rebuilds the model of :func:`build_model`
    with the same arguments (same modules, same state-dict keys and shapes).

    :param arch: architecture name (case-insensitive, ``_`` == ``-``)
    :param num_classes: number of classes :math:`K`
    :param in_channels: number of input planes
    :param kwargs: overrides of the architecture's default arguments, e.g. ``drop_rate``
    :raises UnknownNameError: for an unknown architecture (with the closest name)
    """
    return _entry(arch).spec(num_classes, in_channels, **kwargs)


def build_model(arch: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a freshly initialised model by architecture name.

    :param arch: architecture name, see :data:`ARCHS`
    :param num_classes: number of classes :math:`K`; the model maps ``B x C x H x W`` inputs to
        ``B x K`` logits
    :param in_channels: number of input planes
    :param kwargs: overrides of the architecture's default arguments
    :raises UnknownNameError: for an unknown architecture (with the closest name)
    """
    return _entry(arch)(num_classes, in_channels, **kwargs)
