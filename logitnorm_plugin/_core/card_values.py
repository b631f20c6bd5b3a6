"""The values of a model card (``model.json`` of a run folder), checked before anything uses
them.

The rule: **a card's values are checked against their meaning in one place, when the card is
read** (:func:`check_card_values`, called by ``read_card`` of
:mod:`logitnorm_plugin.training.runs` after the card's seal matched). A seal guards against
accidents, not against someone who recomputes it, so every field a reader computes with must
hold a value of its kind: the temperature ``t`` a finite number > 0, the preprocessing's
``mean`` finite numbers and ``std`` finite numbers > 0 of the same length, ``size`` two
positive integers, the text fields text, ``metrics`` numbers. Anything else is a
:class:`~logitnorm_plugin._core.errors.ModelIntegrityError` naming the card and the field, one
line on the command line (exit status 2), instead of a traceback or a NaN deep inside an
evaluation.

Torch-free.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from logitnorm_plugin._core.errors import ModelIntegrityError

__all__ = ["check_card_values"]

_TEXT_FIELDS = ("key", "arch", "dataset", "loss", "seed", "recipe", "description", "source",
                "arch_class")


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _problem(card: Mapping[str, Any]) -> str | None:
    """What is wrong with the card's values, or ``None``."""
    for name in _TEXT_FIELDS:
        if card.get(name) is not None and not isinstance(card[name], str):
            return f"{name!r} is {type(card[name]).__name__}, not text"
    if not isinstance(card.get("arch_class"), str):
        return "'arch_class' is missing"
    if not isinstance(card.get("arch_kwargs"), dict):
        return "'arch_kwargs' is not a mapping of argument names to values"
    t = card.get("t")
    if t is not None and not (_number(t) and t > 0):
        return f"'t' is {str(t)[:40]!r}, not a finite number > 0"
    metrics = card.get("metrics")
    if metrics is not None and not (isinstance(metrics, dict) and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
            for v in metrics.values())):  # NaN allowed: an undefined accuracy is shown as such
        return "'metrics' is not a mapping of names to numbers"
    pre = card.get("preprocessing")
    if pre is None:
        return None
    if not isinstance(pre, dict):
        return "'preprocessing' is not a mapping"
    mean, std, size = pre.get("mean"), pre.get("std"), pre.get("size")
    if not (isinstance(mean, list) and mean and all(_number(v) for v in mean)):
        return "'preprocessing.mean' is not a list of finite numbers"
    if not (isinstance(std, list) and len(std) == len(mean)
            and all(_number(v) and v > 0 for v in std)):
        return ("'preprocessing.std' is not a list of finite numbers > 0 as long as "
                "'preprocessing.mean'")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(isinstance(v, int) and not isinstance(v, bool)
                                         and 0 < v <= 65536 for v in size)):
        return "'preprocessing.size' is not two positive integers"
    return None


def check_card_values(card: Mapping[str, Any], where: str) -> None:
    """Check the values of a model card (see the module's docstring).

    :param card: the parsed card
    :param where: the card's path, named in the error
    :raises ModelIntegrityError: for the first field whose value is not of its kind
    """
    problem = _problem(card)
    if problem is not None:
        raise ModelIntegrityError(
            f"model card {where!r}: {problem}; refusing to use it (a seal can be recomputed "
            "by anyone: only use run folders from sources you trust)"
        )
