"""What one ``logitnorm-ood bench`` run is asked to do: one frozen :class:`BenchRequest`.

Built once (by the command line, or from the keyword arguments of
:func:`logitnorm_plugin.workflows.bench.run`) and passed down whole, so no option is retyped
through a chain of signatures and a swapped pair cannot go unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Tuple

from logitnorm_plugin._core.arg_checks import out_path
from logitnorm_plugin._core.conventions import DEFAULT_DETECTORS, canonical_name
from logitnorm_plugin._core.errors import UserError

__all__ = ["BenchRequest", "DEFAULTS"]

#: the embedded default run
DEFAULTS = {
    "benchmark": "digits",
    "losses": ("cross_entropy", "logitnorm"),
    "detectors": DEFAULT_DETECTORS,
    "seeds": (0, 1, 2),
    "out": "results",
    "batch_size": 256,
}


@dataclass(frozen=True)
class BenchRequest:
    """A comparison: which models (trained from ``losses`` x ``seeds``, or given as
    ``models``), which detectors, on which benchmark, and where the outputs go.

    :param benchmark: a registered benchmark name
    :param models: ``LABEL=SPEC`` strings, run folders, registry keys or a dict label ->
        model (:func:`~logitnorm_plugin.workflows.model_labels.model_specs`); ``None``: train
        ``losses`` x ``seeds``
    :param losses: registered training objectives (names are compared canonically)
    :param detectors: registered detectors, ``(name, kwargs)`` pairs, a dict name -> kwargs,
        or ``"all"``
    :param seeds: training seeds
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``
    :param out: the results folder (store, run folders, tables)
    :param data_root: where datasets live
    :param download: download missing data
    :param force: recompute cells the store already has
    :param batch_size: samples per forward pass
    :param protocol: ``"full"`` or the paper's protocol
    :param recipe: training recipe name (default: the dataset's)
    :param epochs: override the recipe's epochs
    :param t: LogitNorm temperature of the LogitNorm models
    :param t_from: a ``recommended_t.json`` for the LogitNorm models
    :param progress: a bar and one line per trained model on stderr; ``"epochs"``: also a
        line per epoch (``--verbose``); ``False``: none
    :param plots: write score histograms
    :param num_workers: DataLoader workers of the evaluation
    :param threads: torch CPU threads: a number, ``"auto"`` (1 for the digits benchmark on the
        CPU) or ``None`` (unchanged)
    :param command: the command line, for the provenance record
    :param outliers: auxiliary outlier source of the objectives that need one (default: the
        dataset's named source); the other objectives train without
    :param lock_timeout: seconds to wait for another run holding ``out`` (``None``: as long as
        it takes; 0: fail at once)
    """

    benchmark: str = DEFAULTS["benchmark"]
    models: Sequence[str] | Mapping[str, Any] | None = None
    losses: Tuple[str, ...] = DEFAULTS["losses"]
    detectors: Any = DEFAULTS["detectors"]
    seeds: Tuple[int, ...] = DEFAULTS["seeds"]
    device: str = "cpu"
    out: Path = Path(DEFAULTS["out"])
    data_root: str | None = None
    download: bool = False
    force: bool = False
    batch_size: int = DEFAULTS["batch_size"]
    protocol: str = "full"
    recipe: str | None = None
    epochs: int | None = None
    t: float | None = None
    t_from: str | None = None
    progress: bool | str = True
    plots: bool = True
    num_workers: int = 0
    threads: int | str | None = None
    command: str | None = None
    outliers: str | None = None
    lock_timeout: float | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"the batch size must be >= 1, got {self.batch_size}")
        # one canonical spelling of every objective, so `LogitNorm` is `logitnorm` everywhere
        set_ = object.__setattr__
        set_(self, "losses", tuple(canonical_name(loss) for loss in self.losses or ()))
        set_(self, "seeds", tuple(int(s) for s in self.seeds or ()))
        set_(self, "out", out_path(self.out))
        if isinstance(self.models, (list, tuple)) and not self.models:
            set_(self, "models", None)
        if not self.models and (not self.losses or not self.seeds):
            raise UserError("name at least one loss and one seed (or --models)")
