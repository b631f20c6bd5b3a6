"""Named training recipes: the paper's, OpenOOD's, and a fast CPU one for the digits.

A recipe is one frozen record with every choice that shapes a training run except the loss,
the dataset and the seed. :class:`~logitnorm_plugin.training.config.TrainConfig` fills whatever
the caller left unset from the recipe, and the trainer writes the resolved configuration in
full to ``config.json`` of the run folder, so a run can be reproduced from that file alone.

This module also holds where a LogitNorm temperature comes from (:func:`resolve_t`, the one
rule) and the record of a temperature chosen by ``logitnorm-ood tune-t``
(:func:`load_recommendation`; the digits result ships as ``tuned_t.json``).

The facts behind ``paper`` and ``openood`` were read from the public code of the original
LogitNorm repository (``hongxin001/logitnorm_ood``: ``train.py``,
``algorithms/base_framework.py``) and of OpenOOD v1.5 (``configs/pipelines/train/*.yml``,
``openood/trainers/logitnorm_trainer.py``); nothing was copied from either.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from logitnorm_plugin._core.conventions import canonical_name
from logitnorm_plugin._core.errors import (
    IncompatibleResultsError,
    MissingDataError,
    UnknownNameError,
    UsageError,
    UserError,
    closest_match,
)

__all__ = [
    "RECIPES",
    "RECOMMENDED_T_FILE",
    "Recipe",
    "RecipeFields",
    "TemperatureChoice",
    "default_recipe_for",
    "get_recipe",
    "list_recipes",
    "load_recommendation",
    "recommended_digits_t",
    "resolve_t",
    "tuned_t_record",
]

# -- the record of a temperature chosen by `logitnorm-ood tune-t` ------------------------------

# : ``format`` field of a ``recommended_t.json`` (written by
# :mod:`logitnorm_plugin.workflows.tune_t`)
RECOMMENDED_T_FORMAT = "logitnorm-plugin/recommended-t"
RECOMMENDED_T_VERSION = 1
RECOMMENDED_T_FILE = "recommended_t.json"
#: the digits result shipped in the package
TUNED_T_FILE = "tuned_t.json"


def load_recommendation(path) -> Dict[str, Any]:
    """A ``recommended_t.json`` of ``logitnorm-ood tune-t`` (or the shipped ``tuned_t.json``),
    checked for its format: a file of any other origin is refused, whatever it holds.

    :param path: the file, or a ``tune-t`` output folder holding it
    :raises MissingDataError: if there is no such file
    :raises IncompatibleResultsError: if the file is not a ``recommended_t.json`` this version
        reads, or its ``chosen_t`` is not a positive number
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / RECOMMENDED_T_FILE
    if not path.is_file():
        raise MissingDataError(
            f"no {RECOMMENDED_T_FILE} at {str(path)!r}; write one with `logitnorm-ood tune-t` "
            "(it records the chosen temperature as 'chosen_t')"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise IncompatibleResultsError(f"{str(path)!r} is not JSON ({exc})") from exc
    if (not isinstance(record, dict) or record.get("format") != RECOMMENDED_T_FORMAT
            or not isinstance(record.get("format_version"), int)
            or record["format_version"] > RECOMMENDED_T_VERSION):
        raise IncompatibleResultsError(
            f"{str(path)!r} is not a {RECOMMENDED_T_FILE} written by `logitnorm-ood tune-t` "
            f"(format {RECOMMENDED_T_FORMAT!r}, version <= {RECOMMENDED_T_VERSION}, with the "
            "chosen temperature as 'chosen_t'); give the temperature as --loss-arg t=... "
            "instead"
        )
    t = record.get("chosen_t")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise IncompatibleResultsError(
            f"{str(path)!r}: chosen_t must be a positive number, got {t!r}"
        )
    return record


def tuned_t_record() -> Dict[str, Any]:
    """The digits tuning result shipped with the package (``logitnorm_plugin/tuned_t.json``),
    with the command that reproduces it under ``"command"``."""
    return load_recommendation(Path(__file__).resolve().parent / TUNED_T_FILE)


def recommended_digits_t() -> float:
    """The LogitNorm temperature chosen by ``logitnorm-ood tune-t`` for the digits with the
    digits recipe (the embedded default benchmark uses it)."""
    return float(tuned_t_record()["chosen_t"])


#: where the temperatures of the recipes come from (quoted in model cards)
T_SOURCE_CIFAR10 = (
    "t=0.04 for CIFAR-10: the first author's OpenOOD LogitNorm config "
    "(configs/pipelines/train/train_logitnorm.yml, tau 0.04), also used for pytorch-ood's "
    "registry weights wrn-40-2/cifar10/logitnorm/*"
)
T_SOURCE_CIFAR100 = (
    "t=0.0085 for CIFAR-100: the first author's recommendation in the original repository's "
    "issue #2 (github.com/hongxin001/logitnorm_ood/issues/2); the paper's own per-dataset "
    "table of tau was not found"
)
T_SOURCE_OTHER = (
    "t=0.04, the CIFAR-10 value, for a dataset without a published one (tune it with "
    "`logitnorm-ood tune-t`, on Gaussian-noise validation as the paper does)"
)
T_SOURCE_OPENOOD = "t=0.04 for every dataset: OpenOOD v1.5 LogitNorm config (tau 0.04)"
# the digits t is not borrowed from CIFAR-10: it was chosen once by `logitnorm-ood tune-t`
# (validation split vs seeded Gaussian noise, no test data) and ships in tuned_t.json
DIGITS_T = recommended_digits_t()
T_SOURCE_DIGITS = (
    f"t={DIGITS_T:g} chosen by `logitnorm-ood tune-t` on the digits (train split, validation "
    "split vs seeded Gaussian noise, MSP, 3 seeds; logitnorm_plugin/tuned_t.json holds the "
    "per-t results and the command that reproduces them)"
)


@dataclass(frozen=True, kw_only=True)
class RecipeFields:
    """The training choices a recipe fixes and a run may override: the one list of them.

    :class:`Recipe` (a named set of defaults) and
    :class:`~logitnorm_plugin.training.config.TrainConfig` (one run's resolved configuration)
    both derive from it, so a choice is declared, documented and checked here only.

    :param epochs: number of epochs
    :param batch_size: global batch size (split across processes under DDP)
    :param lr: initial learning rate of SGD
    :param momentum: SGD momentum
    :param weight_decay: L2 penalty, applied to every parameter (as in both reference codes)
    :param nesterov: Nesterov momentum
    :param schedule: ``"multistep"`` (lr times ``gamma`` at each of ``milestones``, stepped
        per epoch), ``"cosine"`` (per iteration from ``lr`` to ``lr_min``) or ``"constant"``
    :param milestones: epochs at which ``multistep`` multiplies the lr by ``gamma``
    :param gamma: factor of ``multistep``
    :param lr_min: final lr of ``cosine``
    :param warmup_epochs: linear warm-up of the lr from 0 over this many epochs (per
        iteration), multiplied into the schedule; 0 for none
    :param crop_padding: random crop with this much zero padding per side (0: no crop)
    :param flip: random horizontal flip with probability 1/2
    :param drop_last: drop the last incomplete batch of each epoch
    :param train_split: ``"train_full"`` (all training images) or ``"train"`` (training images
        minus the validation hold-out)
    :param keep: ``"last"`` (the final epoch's weights) or ``"best_val"`` (the epoch with the
        best accuracy on the ``val`` split)
    :raises UsageError: (a ``ValueError``) for a value out of range or a conflicting pair
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    lr_min: float = 0.0
    warmup_epochs: float = 0.0
    crop_padding: int = 4
    flip: bool = True
    drop_last: bool = True
    train_split: str = "train_full"
    keep: str = "last"

    def __post_init__(self):
        if self.epochs < 1:
            raise UsageError(f"the number of epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UsageError(f"the batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise UsageError(f"the learning rate must be > 0, got {self.lr}")
        if self.schedule not in ("multistep", "cosine", "constant"):
            raise UsageError(f"unknown schedule {self.schedule!r}")
        if self.keep not in ("last", "best_val"):
            raise UsageError(f"keep must be 'last' or 'best_val', got {self.keep!r}")
        if self.train_split not in ("train", "train_full"):
            raise UsageError("train_split must be 'train' or 'train_full'")
        if self.keep == "best_val" and self.train_split != "train":
            # selecting on images the model trained on would select nothing
            raise UsageError(
                "keep='best_val' needs train_split='train' (the val split is held out)"
            )

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        """The names of these choices, in their order (that of ``config.json``)."""
        return tuple(f.name for f in fields(RecipeFields))

    @classmethod
    def coerce(cls, values: Dict[str, Any]) -> Dict[str, Any]:
        """The choices among ``values`` as the plain JSON types of ``config.json`` (each cast
        to its declared type, ``milestones`` to a list of ints)."""
        casts = {"int": int, "float": float, "bool": bool, "str": str}
        out = {}
        for f in fields(RecipeFields):
            value = values[f.name]
            out[f.name] = ([int(v) for v in value] if f.type == "Sequence[int]"
                           else casts[f.type](value))
        return out

    def choices(self) -> Dict[str, object]:
        """These choices by name (the recipe's own values, before a run's overrides)."""
        return {name: getattr(self, name) for name in self.names()}


@dataclass(frozen=True, kw_only=True)
class Recipe(RecipeFields):
    """A named set of training choices (:class:`RecipeFields`): everything except loss,
    dataset and seed.

    :param name: lower-case name, e.g. ``"paper"``
    :param description: one line for listings and model cards
    :param arch: architecture name (see :mod:`logitnorm_plugin.registry.architectures`)
    :param arch_kwargs: constructor overrides for ``arch`` as ``(key, value)`` pairs, e.g.
        ``(("drop_rate", 0.3),)``; applied only when the run uses this recipe's ``arch``
    :param t: LogitNorm temperature per dataset as ``(dataset, t, source)`` triples; the
        entry ``"*"`` applies to any other dataset
    :param source: where the recipe comes from
    """

    name: str
    description: str
    arch: str
    arch_kwargs: Tuple[Tuple[str, object], ...] = ()
    t: Tuple[Tuple[str, float, str], ...] = field(default=())
    source: str = ""

    def t_for(self, dataset: str) -> Tuple[float | None, str]:
        """The recipe's LogitNorm temperature for ``dataset`` and where it comes from.

        :return: ``(t, source)``; ``(None, "")`` if the recipe names none for it
        """
        key = canonical_name(dataset)
        default = None
        for name, t, source in self.t:
            if canonical_name(name) == key:
                return t, source
            if name == "*":
                default = (t, source)
        return default if default is not None else (None, "")

    def to_dict(self) -> Dict[str, object]:
        """The recipe as plain JSON types: name, description, arch, the choices, arch_kwargs,
        t and source."""
        own = asdict(self)
        d = {key: own[key] for key in ("name", "description", "arch")}
        d.update({key: own[key] for key in self.names()})
        d.update({key: own[key] for key in ("arch_kwargs", "t", "source")})
        d["milestones"] = list(self.milestones)
        d["arch_kwargs"] = dict(self.arch_kwargs)
        d["t"] = [{"dataset": n, "t": t, "source": s} for n, t, s in self.t]
        return d


RECIPES: Dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="paper",
            description=(
                "LogitNorm paper / original code: WRN-40-2 (dropout 0.3), 200 epochs, SGD "
                "lr 0.1 momentum 0.9 wd 5e-4, batch 128, lr/10 at epochs 80 and 140, crop(4)+"
                "flip, last epoch kept"
            ),
            arch="wrn-40-2",
            arch_kwargs=(("drop_rate", 0.3),),
            epochs=200,
            batch_size=128,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            nesterov=False,  # the original code's SGD has no Nesterov
            schedule="multistep",
            milestones=(80, 140),
            gamma=0.1,
            crop_padding=4,
            flip=True,
            drop_last=True,  # the original train loader drops the last partial batch
            train_split="train_full",
            keep="last",
            t=(
                ("cifar10", 0.04, T_SOURCE_CIFAR10),
                ("cifar100", 0.0085, T_SOURCE_CIFAR100),
                ("*", 0.04, T_SOURCE_OTHER),
            ),
            source="Wei et al., ICML 2022 (arXiv:2205.09310); github.com/hongxin001/logitnorm_ood",
        ),
        Recipe(
            name="openood",
            description=(
                "OpenOOD v1.5: ResNet-18 (32x32), 100 epochs, SGD lr 0.1 Nesterov momentum 0.9 "
                "wd 5e-4, batch 128, per-iteration cosine to 1e-6, crop(4)+flip, best "
                "validation checkpoint"
            ),
            arch="resnet18-32x32",
            epochs=100,
            batch_size=128,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            nesterov=True,
            schedule="cosine",
            lr_min=1e-6,
            crop_padding=4,
            flip=True,
            drop_last=False,
            train_split="train",
            keep="best_val",
            t=(("*", 0.04, T_SOURCE_OPENOOD),),
            source="OpenOOD v1.5 (github.com/Jingkang50/OpenOOD), configs/pipelines/train",
        ),
        Recipe(
            name="digits",
            description=(
                "fast CPU recipe for the scikit-learn digits: digits-cnn (BatchNorm), 15 "
                "epochs, SGD lr 0.05 momentum 0.9 wd 5e-4, batch 64, 3-epoch linear warm-up "
                "then per-iteration cosine, 1-pixel crop, no flip, last epoch kept"
            ),
            arch="digits-cnn",
            epochs=15,
            batch_size=64,
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            nesterov=False,
            schedule="cosine",
            lr_min=0.0,
            # without warm-up the first LogitNorm steps (gradient ~ 1/(t ||z||) with a tiny
            # initial ||z||) blow the logit norm up to ~200 and training stalls at 70-85%
            warmup_epochs=3,
            crop_padding=1,
            flip=False,  # mirrored digits are other shapes (2, 5, 7 ...)
            drop_last=False,
            train_split="train_full",
            keep="last",
            t=(("*", DIGITS_T, T_SOURCE_DIGITS),),
            source=(
                "this plugin: lr/epochs/warm-up chosen so that cross-entropy and LogitNorm "
                "both train in seconds on CPU (HOST_PITFALLS 11-12: BatchNorm needed)"
            ),
        ),
    )
}


def list_recipes(pattern: str | None = None) -> List[str]:
    """Sorted recipe names, optionally filtered by a shell-style ``pattern`` (``"open*"``)."""
    names = sorted(RECIPES)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatch(n, pattern.lower())]


def get_recipe(name) -> Recipe:
    """The recipe called ``name`` (case-insensitive); a :class:`Recipe` is returned as is.

    :raises UnknownNameError: for an unknown name, with the closest match
    """
    if isinstance(name, Recipe):
        return name
    recipe = RECIPES.get(canonical_name(name))  # the table's keys are canonical names
    if recipe is not None:
        return recipe
    raise UnknownNameError("recipe", str(name), RECIPES, closest_match(str(name), RECIPES))


def default_recipe_for(dataset: str) -> str:
    """The recipe used when none is named: ``digits`` for the digits, ``paper`` otherwise."""
    return recipe_for_key(canonical_name(dataset))


def recipe_for_key(key: str) -> str:
    """:func:`default_recipe_for` a dataset name already in canonical form (or a folder)."""
    return "digits" if key == "digits" else "paper"


# -- where the temperature of a run comes from ------------------------------------------------


@dataclass(frozen=True)
class TemperatureChoice:
    """The LogitNorm temperature of a run and where it comes from.

    :param t: the temperature, ``None`` for a loss without one
    :param source: one sentence for the model card (empty when there is no temperature)
    :param path: the resolved ``recommended_t.json`` it was read from, if any
    """

    t: float | None
    source: str = ""
    path: str | None = None


def _takes_t(loss_cls: type) -> bool:
    try:
        return "t" in inspect.signature(loss_cls).parameters
    except (TypeError, ValueError):
        return False


def own_t(loss_cls: type) -> bool:
    """Whether ``loss_cls`` takes a ``t`` that is not LogitNorm's temperature (it declares
    ``recipe_t = False``, as T2FNorm does): the recipes' t, ``--t-from`` and the ``logitnorm``
    detector's training temperature do not apply to it; its default is its published value."""
    return _takes_t(loss_cls) and not getattr(loss_cls, "recipe_t", True)


def resolve_t(loss_cls: type, loss_name: str, loss_kwargs: Dict[str, Any], t_from, recipe,
              dataset: str) -> TemperatureChoice:
    """The one rule for a run's LogitNorm temperature, in this order: the caller's
    ``loss_kwargs["t"]``; the ``chosen_t`` of a ``recommended_t.json`` given as ``t_from``;
    the recipe's value for ``dataset``; none for a loss without a ``t`` parameter or with a
    ``t`` of its own (:func:`own_t`).

    :param loss_cls: the loss class (its constructor tells whether it takes ``t``)
    :param loss_name: its name, for messages
    :param loss_kwargs: the caller's loss arguments
    :param t_from: path of a ``recommended_t.json`` (or its folder), or ``None``
    :param recipe: the :class:`Recipe` of the run
    :param dataset: the dataset tag (a registered name, or an image folder's name)
    :raises UserError: for ``t`` given twice, ``t_from`` for a loss without a temperature, or a
        ``recommended_t.json`` tuned on another dataset
    """
    if own_t(loss_cls):
        if t_from is not None:
            raise UserError(f"--t-from holds a tuned LogitNorm temperature, but loss "
                            f"'{loss_name}' has a temperature of its own: pass --loss-arg t=...")
        # its t (T2FNorm's tau) stays in the loss arguments; the run has no LogitNorm t
        return TemperatureChoice(None)
    if t_from is not None:
        if "t" in loss_kwargs:
            raise UserError(
                "give the temperature either as --loss-arg t=... or --t-from, not both"
            )
        if not _takes_t(loss_cls):
            raise UserError(f"--t-from: loss '{loss_name}' has no temperature argument 't'")
        record = load_recommendation(t_from)
        path = Path(t_from).expanduser()
        path = (path / RECOMMENDED_T_FILE if path.is_dir() else path).resolve()
        tuned_on = record.get("dataset")
        if tuned_on is not None and canonical_name(tuned_on) != canonical_name(dataset):
            raise UserError(
                f"--t-from {str(path)!r} chose t on '{tuned_on}', but this run trains on "
                f"'{dataset}'; tune t on '{dataset}', or pass --loss-arg t=... to use the "
                "value anyway"
            )
        return TemperatureChoice(
            float(record["chosen_t"]), f"chosen_t of {path} (logitnorm-ood tune-t)", str(path)
        )
    if "t" in loss_kwargs:
        return TemperatureChoice(loss_kwargs["t"], "given by the caller (--loss-arg t=...)")
    if _takes_t(loss_cls):
        t, source = recipe.t_for(dataset)
        return TemperatureChoice(t, source)
    return TemperatureChoice(None)
