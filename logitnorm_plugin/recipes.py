"""Named training recipes: the paper's, OpenOOD's, and a fast CPU one for the digits.

A recipe is one frozen record with every choice that shapes a training run except the loss,
the dataset and the seed. :func:`logitnorm_plugin.train.train` fills whatever the caller left
unset from the recipe and writes the resolved configuration in full to ``config.json`` of the
run folder, so a run can be reproduced from that file alone.

The facts behind ``paper`` and ``openood`` were read from the public code of the original
LogitNorm repository (``hongxin001/logitnorm_ood``: ``train.py``,
``algorithms/base_framework.py``) and of OpenOOD v1.5 (``configs/pipelines/train/*.yml``,
``openood/trainers/logitnorm_trainer.py``); nothing was copied from either.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Tuple

from logitnorm_plugin.errors import UnknownNameError, closest_match
from logitnorm_plugin.tune import recommended_digits_t

__all__ = ["Recipe", "RECIPES", "get_recipe", "list_recipes", "default_recipe_for"]

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


@dataclass(frozen=True)
class Recipe:
    """Every training choice except loss, dataset and seed.

    :param name: lower-case name, e.g. ``"paper"``
    :param description: one line for listings and model cards
    :param arch: architecture name (see :mod:`logitnorm_plugin.models`)
    :param arch_kwargs: constructor overrides for ``arch`` as ``(key, value)`` pairs, e.g.
        ``(("drop_rate", 0.3),)``; applied only when the run uses this recipe's ``arch``
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
    :param t: LogitNorm temperature per dataset as ``(dataset, t, source)`` triples; the
        entry ``"*"`` applies to any other dataset
    :param source: where the recipe comes from
    """

    name: str
    description: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"
    milestones: Tuple[int, ...] = ()
    gamma: float = 0.1
    lr_min: float = 0.0
    warmup_epochs: float = 0.0
    crop_padding: int = 4
    flip: bool = True
    drop_last: bool = True
    train_split: str = "train_full"
    keep: str = "last"
    arch_kwargs: Tuple[Tuple[str, object], ...] = ()
    t: Tuple[Tuple[str, float, str], ...] = field(default=())
    source: str = ""

    def __post_init__(self):
        if self.schedule not in ("multistep", "cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.keep not in ("last", "best_val"):
            raise ValueError(f"keep must be 'last' or 'best_val', got {self.keep!r}")
        if self.train_split not in ("train", "train_full"):
            raise ValueError("train_split must be 'train' or 'train_full'")
        if self.keep == "best_val" and self.train_split != "train":
            # selecting on images the model trained on would select nothing
            raise ValueError("keep='best_val' needs train_split='train' (val is held out)")

    def t_for(self, dataset: str) -> Tuple[float | None, str]:
        """The recipe's LogitNorm temperature for ``dataset`` and where it comes from.

        :return: ``(t, source)``; ``(None, "")`` if the recipe names none for it
        """
        key = str(dataset).lower()
        default = None
        for name, t, source in self.t:
            if name == key:
                return t, source
            if name == "*":
                default = (t, source)
        return default if default is not None else (None, "")

    def to_dict(self) -> Dict[str, object]:
        """The recipe as plain JSON types."""
        d = asdict(self)
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
    key = str(name).strip().lower().replace("_", "-")
    if key in RECIPES:
        return RECIPES[key]
    raise UnknownNameError("recipe", str(name), RECIPES, closest_match(key, RECIPES))


def default_recipe_for(dataset: str) -> str:
    """The recipe used when none is named: ``digits`` for the digits, ``paper`` otherwise."""
    return "digits" if str(dataset).strip().lower() == "digits" else "paper"
