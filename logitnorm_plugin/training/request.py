"""What one training run is asked to do: one frozen :class:`TrainRequest`.

Built once (by ``logitnorm-ood train``, or from the keyword arguments of
:func:`logitnorm_plugin.training.loop.train`, the public entry point) and passed down whole:
:func:`~logitnorm_plugin.training.config.configure` turns its configuration part into a
:class:`~logitnorm_plugin.training.config.TrainConfig`, the trainer reads the rest (where and
how the run goes). No option is retyped through a chain of signatures, so a swapped pair
cannot go unnoticed. Torch-free.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Mapping

from logitnorm_plugin._core.arg_checks import MAX_SEED
from logitnorm_plugin._core.errors import UsageError
from logitnorm_plugin.training.recipes import RecipeFields

__all__ = ["TrainRequest"]

#: recipe fields a request may override by keyword (the named options are fields of their own)
OVERRIDABLE = frozenset(RecipeFields.names()) - {"epochs", "batch_size", "lr"}


def _positive(value, name: str, what: str, strict: bool = True) -> None:
    if value is None:
        return
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or not (value > 0 if strict else value >= 0):
        raise UsageError(f"{what} must be {'>' if strict else '>='} 0, got {value!r} ({name})")


@dataclass(frozen=True)
class TrainRequest:
    """A training run: what to train (the configuration part, see
    :func:`~logitnorm_plugin.training.config.configure`) and where and how it runs.

    The fields are the keyword arguments of :func:`logitnorm_plugin.training.loop.train`,
    documented there, with ``overrides`` for its ``**recipe_overrides`` (other recipe fields,
    e.g. ``{"momentum": 0.0}``). Values are checked here once; names (dataset, loss,
    architecture, recipe, outlier source) when the configuration is resolved.

    :raises UsageError: (a ``ValueError``) naming the field of a value out of range, or an
        unknown recipe field in ``overrides``
    """

    dataset: str = "digits"
    arch: str | None = None
    loss: Any = "logitnorm"
    loss_kwargs: Mapping[str, Any] | None = None
    recipe: Any = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: Any = "cpu"
    out: Any = None
    resume: bool | str = False
    amp: bool | str | None = None
    compile: bool | str | None = None
    data_root: Any = None
    download: bool = False
    t_from: Any = None
    deterministic: bool = False
    progress: bool | str = True
    channels_last: bool | None = None
    arch_kwargs: Mapping[str, Any] | None = None
    eval_batch_size: int = 1024
    check_every: int = 100
    callback: Callable[[Dict[str, Any]], None] | None = None
    eval_split: str = "test"
    outliers: Any = None
    outlier_ratio: float | None = None
    outlier_seed: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.resume not in (False, True, "auto"):
            raise UsageError(f"resume must be False, True or 'auto', got {self.resume!r}")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"the number of epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"the batch size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"the learning rate must be > 0, got {self.lr}")
        for name in ("seed", "outlier_seed"):
            value = getattr(self, name)
            if value is None and name == "outlier_seed":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
                0 <= value <= MAX_SEED
            ):
                what = "the seed" if name == "seed" else "the outlier seed"
                raise UsageError(f"{what} must be an integer in 0..{MAX_SEED}, got {value!r}")
            object.__setattr__(self, name, int(value))  # a numpy integer is recorded as int
        if self.eval_split not in ("test", "val"):
            raise UsageError(f"eval_split must be 'test' or 'val', got {self.eval_split!r}")
        _positive(self.outlier_ratio, "outlier_ratio", "the outlier ratio")
        _positive(self.eval_batch_size, "eval_batch_size", "the evaluation batch size")
        _positive(self.check_every, "check_every", "check_every", strict=False)
        unknown = sorted(set(self.overrides) - OVERRIDABLE)
        if unknown:
            raise UsageError(
                f"unknown training option(s) {unknown}; recipe fields: "
                f"{sorted(RecipeFields.names())}"
            )
        # own copies: a caller's dict changed later does not change the request
        copy = object.__setattr__
        for name in ("loss_kwargs", "arch_kwargs"):
            value = getattr(self, name)
            if value is not None:
                copy(self, name, dict(value))
        copy(self, "overrides", dict(self.overrides))

    @classmethod
    def of(cls, **options) -> TrainRequest:
        """A request from keyword arguments as :func:`~logitnorm_plugin.training.loop.train`
        takes them: its named options, and recipe fields (``momentum=0.0``) as overrides."""
        named = {f.name for f in fields(cls)}
        given = {k: v for k, v in options.items() if k in named}
        overrides = dict(given.pop("overrides", None) or {})
        overrides.update({k: v for k, v in options.items() if k not in named})
        return cls(**given, overrides=overrides)
