"""What one evaluation is asked to do: one frozen :class:`EvaluateRequest`.

Built once, from the keyword arguments of :func:`logitnorm_plugin.evaluation.engine.evaluate`
(``lp.evaluate``, the public entry point), and passed down whole to the engine, so no option
is retyped through a chain of signatures. Torch-free.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Tuple, Union

from logitnorm_plugin._core.arg_checks import MAX_SEED
from logitnorm_plugin._core.conventions import DEFAULT_DETECTORS
from logitnorm_plugin._core.errors import UsageError

__all__ = ["PROTOCOLS", "EvaluateRequest"]

#: the evaluation protocols (see :mod:`logitnorm_plugin.evaluation.protocol`)
PROTOCOLS = ("full", "paper")


def _integer(value, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
        high is not None and value > high
    ):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise UsageError(f"{name} must be an integer {bound}, got {value!r}")


@dataclass(frozen=True)
class EvaluateRequest:
    """An evaluation: which models, on which benchmark, with which detectors, and how.

    The fields are the arguments of :func:`logitnorm_plugin.evaluation.engine.evaluate`,
    documented there. Values are checked here once; names (benchmark, detectors, models) when
    the engine resolves them.

    :raises UsageError: (a ``ValueError``) naming the field of a value out of range
    """

    models: Any
    benchmark: Any
    detectors: Any = DEFAULT_DETECTORS
    device: Any = "cpu"
    batch_size: int = 256
    seed: int = 0
    store: Any = None
    force: bool = False
    progress: bool = True
    protocol: str = "full"
    repetitions: int = 10
    data_root: str | None = None
    download: bool = False
    benchmark_kwargs: Mapping[str, Any] | None = None
    keep_scores: Union[bool, Callable[[Any], bool]] = False
    scores_out: Dict[Tuple[str, str, str], Any] | None = None
    num_workers: int = 0
    provenance: Mapping[str, Any] | None = None
    cache_dir: str | os.PathLike | None = None

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"protocol must be 'full' or 'paper', got {self.protocol!r}")
        if isinstance(self.batch_size, bool) or not isinstance(
            self.batch_size, numbers.Integral
        ) or self.batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {self.batch_size}")
        _integer(self.seed, "seed", 0, MAX_SEED)
        _integer(self.repetitions, "repetitions", 1)
        _integer(self.num_workers, "num_workers", 0)
