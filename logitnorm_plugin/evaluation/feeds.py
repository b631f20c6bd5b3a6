"""How the evaluation engine feeds every detector from one pass per dataset.

When some detector needs more than logits, the engine's one pass over a dataset goes through
the model's split (:mod:`logitnorm_plugin.registry.split`, :class:`SplitForward`): the encoder
gives the
``B x D`` features ``z`` and the final Linear the logits ``head(z)``; with a detector on the
``feature_maps`` layer the backbone gives the maps ``m`` once, and ``z`` is the final Linear's
input while their head runs. Every detector is fed by its kind (:func:`plan`); the host class
(the registered class itself) does all the scoring and fitting:

============  ==========================================  ======================================
kind          scored with                                 fitted with (the shared train pass)
============  ==========================================  ======================================
``logits``    ``predict_logits(logits)``                  ``fit_logits(logits, y)``
``features``  ``predict_features(z)`` (built on the       ``fit_features(z, y)``
              split's encoder)
``backbone``  ``predict(out)``, the host built with an    ``fit_feature_maps(out, y)``
              identity backbone and the split's head of
              its layer; ``out`` is ``z`` as
              ``B x D x 1 x 1`` (``penultimate``) or
              ``m`` (``feature_maps``)
``input``     ``predict(x)``: its own pass (input         ``fit_features(z, y)`` when built on
              gradients, sampling, caller's instances,    the split's encoder, else its own
              caller-given parts)                         ``fit(loader)``
============  ==========================================  ======================================

Fused ODIN is an ``input`` detector that the engine serves from the same pass (see
:mod:`logitnorm_plugin.evaluation.engine`), when its settings are numbers (:func:`fusable`).

A detector's own ``fit``/``predict`` call that fails with arguments the user chose (a
:data:`FAULTS` exception of that call only, never of the engine's code around it) is one
:class:`~logitnorm_plugin._core.errors.DetectorFitError` or
:class:`~logitnorm_plugin._core.errors.DetectorScoreError` naming that detector with its
arguments, the model and the data (:class:`Blame`); anything else keeps its traceback.
"""

from __future__ import annotations

import inspect
import numbers
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import torch
from pytorch_ood.api import (
    Detector,
    FeatureMapsDetector,
    FeaturesDetector,
    GradientDetector,
    LogitsDetector,
)
from pytorch_ood.detector import ODIN
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from logitnorm_plugin._core.errors import (
    DetectorArgumentsError,
    DetectorFitError,
    DetectorScoreError,
    UnsupportedModelError,
    UserError,
)
from logitnorm_plugin.registry.entry_points import create_detector
from logitnorm_plugin.registry.split import published_defaults, split_model

LOGITS, FEATURES, BACKBONE, INPUT = "logits", "features", "backbone", "input"
#: what a shared train pass can hold besides the labels
MAPS = "maps"
#: the kinds the shared pass scores (besides logits detectors)
SHARED = (FEATURES, BACKBONE)
#: tolerance of the split check, on the logits of the first batch
CHECK_TOLERANCE = 1e-4
#: what a detector's own fit or predict raises for arguments that do not work with this model
#: and data (pytorch-ood checks some inputs with ``assert``: SHE's fit); other exceptions of
#: that call, and every exception of the engine's own code, keep their traceback
FAULTS = (TypeError, ValueError, RuntimeError, AssertionError)


class DetectorRaised(Exception):
    """The detector's own call raised ``cause`` (one of :data:`FAULTS`): internal to the
    engine, which turns it into a one-line error naming the detector (:class:`Blame`)."""

    def __init__(self, cause: BaseException):
        super().__init__(cause)
        self.cause = cause


def own_call(method, *args):
    """``method(*args)``: a detector's own fit or predict call, whose :data:`FAULTS` (other
    than a :class:`~logitnorm_plugin._core.errors.UserError`) are a :class:`DetectorRaised`."""
    try:
        return method(*args)
    except UserError:
        raise
    except FAULTS as exc:
        raise DetectorRaised(exc) from exc


@dataclass
class Blame:
    """Whom a failing detector call is about, in one model's evaluation: each detector's
    label with its arguments (by key), the model and the data of the current pass (set by the
    engine before each pass)."""

    labels: Mapping[str, str]
    model: str | None
    where: str = "the benchmark's training split"

    def score(self, key: str, method, *args) -> Tensor:
        """``method(*args)``, the scoring call of the detector ``key``.

        :raises DetectorScoreError: for its :data:`FAULTS`"""
        try:
            return own_call(method, *args)
        except DetectorRaised as raised:
            raise DetectorScoreError(self.labels[key], self.model, self.where,
                                     raised.cause, key) from raised.cause

    @contextmanager
    def fitting(self, key: str, detector: Detector):
        """The block fits the detector ``key``: a :class:`DetectorRaised` in it is a
        :class:`~logitnorm_plugin._core.errors.DetectorFitError`."""
        try:
            yield
        except DetectorRaised as raised:
            raise DetectorFitError(key, self.labels.get(key, type(detector).__name__),
                                   raised.cause, model=self.model) from raised.cause


def fusable(detector: Detector, model: nn.Module, std=None) -> bool:
    """Whether the engine computes this detector's scores in its shared pass (fused ODIN):
    exactly :class:`pytorch_ood.detector.ODIN` on the evaluated model, with a number for
    ``eps`` and for ``temperature``, and a ``norm_std`` of numbers that the input can take
    (none, one, or one per channel of ``std``, the model's preprocessing); other settings go
    to ODIN's own ``predict``, whose failure names the detector (:class:`Blame`)."""
    if type(detector) is not ODIN or detector.model is not model:
        return False
    if not all(isinstance(getattr(detector, n), numbers.Real) for n in ("eps", "temperature")):
        return False
    norm_std = detector.norm_std
    if norm_std is None:
        return True
    return (isinstance(norm_std, (list, tuple))
            and all(isinstance(v, numbers.Real) for v in norm_std)
            and len(norm_std) in (0, 1, len(std or ())))


@dataclass(frozen=True)
class Feed:
    """How the engine feeds one detector.

    :param kind: ``"logits"``, ``"features"``, ``"backbone"`` or ``"input"``
    :param layer: of a ``backbone`` detector: ``"penultimate"`` or ``"feature_maps"``
    :param fit_from: what its fit takes from the shared train pass (``"logits"``,
        ``"features"`` or ``"maps"``), or ``None``: no fit, or its own ``fit(loader)``
    """

    kind: str
    layer: str | None = None
    fit_from: str | None = None

    @property
    def scored_from(self) -> str | None:
        """What the scoring pass computes for it besides logits."""
        if self.kind == FEATURES or (self.kind == BACKBONE and self.layer == "penultimate"):
            return FEATURES
        return MAPS if self.kind == BACKBONE else None


def _overrides(cls: type, method: str, base: type) -> bool:
    own = getattr(cls, method, None)
    return callable(own) and own is not getattr(base, method, None)


def build(cls: type, model: nn.Module, kwargs: Mapping[str, Any], label: str) -> Detector:
    """``create_detector(cls, model, **kwargs)``, where arguments the class refuses (a name it
    does not take, a value out of its range: its ``TypeError`` or ``ValueError``) are a
    :class:`~logitnorm_plugin._core.errors.DetectorArgumentsError` naming the detector as
    ``label`` (``knn(k=0)``)."""
    try:
        return create_detector(cls, model, **kwargs)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        raise DetectorArgumentsError(label, exc) from exc


def plan(cls: type, kwargs: Mapping[str, Any]) -> Tuple[Feed, Dict[str, Any]]:
    """The feed of a detector the engine builds as ``create_detector(cls, model, **kwargs)``,
    and what to add to ``kwargs`` (an identity backbone for ``backbone`` detectors).

    Parts given in ``kwargs`` (``encoder=``, ``backbone=``, ``head=``) are the caller's: such
    a detector runs its own passes."""
    fits = bool(getattr(cls, "requires_fit", False))
    gradient = issubclass(cls, GradientDetector)
    if issubclass(cls, LogitsDetector) and not gradient:
        return Feed(LOGITS, fit_from=LOGITS if fits else None), {}
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}

    def on_split(*names: str) -> bool:
        return all(n in params and n not in kwargs for n in names)

    if issubclass(cls, FeaturesDetector) and not gradient and on_split("encoder"):
        fit = fits and _overrides(cls, "fit_features", FeaturesDetector)
        return Feed(FEATURES, fit_from=FEATURES if fit else None), {}
    if issubclass(cls, FeatureMapsDetector) and not gradient and on_split("backbone", "head"):
        layer = kwargs.get("layer", published_defaults(cls).get("layer", "penultimate"))
        source = FEATURES if layer == "penultimate" else MAPS
        return Feed(BACKBONE, layer, source if fits else None), {"backbone": nn.Identity()}
    fit = fits and on_split("encoder") and _overrides(cls, "fit_features", FeaturesDetector)
    return Feed(INPUT, fit_from=FEATURES if fit else None), {}


def instance_feed(detector: Detector) -> Feed:
    """The feed of a caller's instance: logits detectors share the logits (as before), the
    others run their own passes."""
    if isinstance(detector, LogitsDetector) and not isinstance(detector, GradientDetector):
        fits = getattr(detector, "requires_fit", False)
        return Feed(LOGITS, fit_from=LOGITS if fits else None)
    return Feed(INPUT)


def uses_split(feeds: Iterable[Feed]) -> bool:
    """Whether the passes must go through the split (some detector takes features or maps)."""
    return any(f.kind in SHARED or f.fit_from in (FEATURES, MAPS) for f in feeds)


class SplitForward:
    """``model`` run through its split, one batch per call: returns the logits ``head(z)``
    and keeps the batch's features ``z`` (and maps ``m`` when :attr:`maps` is set).

    On its first batch it checks the split's invariant, the logits equal ``model(x)`` on the
    same batch (one extra forward of that batch per model). With :attr:`keep` set, it keeps
    every batch's ``z`` (on the device) and ``m`` (on the CPU) for :meth:`kept`.

    :raises UnsupportedModelError: if the model cannot be split, has no feature maps when
        they are needed, or its split's logits differ from ``model(x)``
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.parts = split_model(model)
        self.maps = self.keep = self.checked = False
        self.z: Tensor | None = None
        self.m: Tensor | None = None
        self._kept: Dict[str, List[Tensor]] = {FEATURES: [], MAPS: []}

    def __call__(self, x: Tensor) -> Tensor:
        parts, m = self.parts, None
        if self.maps:
            backbone, backbone_head = parts.layer("feature_maps")
            m = backbone(x)
            seen = []
            hook = parts.head.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
            try:
                backbone_head(m)
            finally:
                hook.remove()
            z = seen[0] if len(seen) == 1 else parts.encoder(x)
        else:
            z = parts.encoder(x)
        logits = parts.head(z)
        if not self.checked:
            self._check(x, logits)
        self.z, self.m = z.detach(), None if m is None else m.detach()
        if self.keep:
            self._kept[FEATURES].append(self.z)
            if m is not None:
                self._kept[MAPS].append(self.m.to("cpu"))
        return logits

    def _check(self, x: Tensor, logits: Tensor) -> None:
        with torch.no_grad():
            expected = self.model(x.detach())
        got = logits.detach()
        tol = CHECK_TOLERANCE
        if got.shape != expected.shape or not torch.allclose(got, expected, tol, tol):
            path = "the feature_maps path" if self.maps else "head(encoder(x))"
            raise UnsupportedModelError(
                f"{path} differs from model(x) for {type(self.model).__name__} "
                f"({self.parts.kind}): declare the split protocol")
        self.checked = True

    def kept(self) -> Dict[str, Tensor]:
        """The kept ``features`` (and ``maps``) of every batch since :attr:`keep` was set;
        clears them."""
        out = {k: torch.cat(v) for k, v in self._kept.items() if v}
        self._kept = {FEATURES: [], MAPS: []}
        return out


def _backbone_output(feed: Feed, z: Tensor, m: Tensor | None) -> Tensor:
    return z[:, :, None, None] if feed.layer == "penultimate" else m


def shared_scores(detectors: Mapping[str, Tuple[Detector, Feed]],
                  split: SplitForward, blame: Blame) -> Dict[str, Tensor]:
    """Scores of ``features`` and ``backbone`` detectors on the batch ``split`` last ran."""
    scores = {}
    with torch.no_grad():
        for key, (det, feed) in detectors.items():
            if feed.kind == FEATURES:
                scores[key] = blame.score(key, det.predict_features, split.z)
            else:
                scores[key] = blame.score(key, det.predict,
                                          _backbone_output(feed, split.z, split.m))
    return scores


def fit_shared(detector: Detector, feed: Feed, data: Mapping[str, Tensor],
               batch_size: int) -> None:
    """Fit ``detector`` on the shared train pass ``data`` (``labels``, ``logits``,
    ``features``, ``maps``), as its host class fits from a loader of those samples.

    The tensors go to the CPU first: pytorch-ood's own ``fit(loader)`` collects them in a CPU
    ``TensorBuffer`` (``utils.extract_features``) and some fits rely on it (KNN calls
    ``.numpy()``), so a fit on CUDA features would fail where the host's succeeds.

    :raises DetectorRaised: for the :data:`FAULTS` of the detector's own fit call"""
    data = {name: tensor.cpu() for name, tensor in data.items()}
    y = data["labels"]
    if feed.fit_from == LOGITS:
        own_call(detector.fit_logits, data["logits"], y)
    elif feed.kind == BACKBONE:
        out = _backbone_output(feed, data.get(FEATURES), data.get(MAPS))
        if _overrides(type(detector), "fit_feature_maps", FeatureMapsDetector):
            own_call(detector.fit_feature_maps, out, y)
        else:  # the identity backbone makes fit(loader) read the outputs as they are
            own_call(detector.fit, DataLoader(TensorDataset(out, y), batch_size=batch_size))
    else:
        own_call(detector.fit_features, data[FEATURES], y)


@contextmanager
def keeping(split: SplitForward | None, maps: bool):
    """``split`` keeps every batch's features (and maps, if ``maps``) inside the block."""
    if split is None:
        yield
        return
    split.maps, split.keep = maps, True
    try:
        yield
    finally:
        split.keep = False


def pass_names(split: SplitForward | None, maps: bool) -> set:
    """The tensors a training-split pass gives (see :func:`train_data`)."""
    return {"labels", "logits"} | ({FEATURES} if split is not None else set()) | (
        {MAPS} if maps else set())


def train_data(logits: Tensor, labels: Tensor, split: SplitForward | None) -> Dict[str, Tensor]:
    """A training-split pass as the fits take it: ``labels`` and ``logits`` on the device and
    what ``split`` kept (``features`` on the device, ``maps`` on the CPU), ID samples only
    (labels ``>= 0``, as pytorch-ood's ``fit(loader)`` extracts them)."""
    data = {"labels": labels.to(logits.device), "logits": logits,
            **(split.kept() if split is not None else {})}
    known = data["labels"] >= 0
    if not bool(known.all()):
        data = {k: v[known.to(v.device)] for k, v in data.items()}
    return data


def fit_all(detectors: Mapping[str, Detector], feeds: Mapping[str, Feed], train_set,
            train_pass, batch_size: int, num_workers: int = 0,
            blame: Blame | None = None) -> None:
    """Fit every detector that needs it: those fed from logits, features or maps from ONE
    training-split pass ``train_pass(train, maps)`` (see :func:`train_data`), the others by
    their own ``fit(loader)``.

    :param train_set: returns the training split (called only if some detector fits)
    :param blame: names the detectors and the model in errors (default: the class names)
    :raises DetectorFitError: naming the detector whose own ``fit`` call failed (its
        :data:`FAULTS` only)
    """
    blame = blame if blame is not None else Blame({}, None)
    need = {k: d for k, d in detectors.items() if getattr(d, "requires_fit", False)}
    if not need:
        return
    train = train_set()
    wanted = {feeds[k].fit_from for k in need} - {None}
    data = train_pass(train, MAPS in wanted) if wanted else {}
    for key, det in need.items():
        with blame.fitting(key, det):
            if feeds[key].fit_from is not None:
                fit_shared(det, feeds[key], data, batch_size)
            else:
                loader = DataLoader(train, batch_size=batch_size, shuffle=False,
                                    num_workers=num_workers)
                own_call(det.fit, loader)
