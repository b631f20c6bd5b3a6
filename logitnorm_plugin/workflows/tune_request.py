"""What one ``logitnorm-ood tune-t`` run is asked to do: one frozen :class:`TuneRequest`.

Built once from the arguments of :func:`logitnorm_plugin.workflows.tune_t.tune_t` (checked
there, before any data is read) and passed down whole; it also writes the command line that
repeats the run (recorded in ``recommended_t.json``).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Tuple

from logitnorm_plugin._core.conventions import PAPER_FPR_KEY
from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.workflows.t_selection import DEFAULT_GRID, VALIDATION_NOISE_SEED, t_text

__all__ = ["TuneRequest"]


@dataclass(frozen=True)
class TuneRequest:
    """The options of a temperature tuning that decide its results (see
    :func:`~logitnorm_plugin.workflows.tune_t.tune_t` for each)."""

    dataset: str = "digits"
    arch: str | None = None
    grid: Tuple[float, ...] = DEFAULT_GRID
    epochs: int | None = None
    seeds: Tuple[int, ...] = (0,)
    out: str = "tune-t"
    device: str = "cpu"
    recipe: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    acc_margin: float = 0.01
    metric: str = PAPER_FPR_KEY
    noise_n: int | None = None
    noise_seed: int = VALIDATION_NOISE_SEED
    jobs: int = 1
    amp: bool | None = None
    compile: bool | None = None
    threads: int | str | None = None
    #: the objective whose ``t`` is tuned (canonical name)
    loss: str = "logitnorm"

    def __post_init__(self):
        grid = tuple(sorted({float(t) for t in self.grid}))
        seeds = tuple(sorted({int(s) for s in self.seeds}))
        if not grid or any(not math.isfinite(t) or t <= 0 for t in grid):
            raise UserError(f"the grid needs positive temperatures, got {list(grid)}")
        if not seeds:
            raise UserError("give at least one seed")
        if int(self.jobs) < 1:
            raise UserError(f"jobs must be >= 1, got {self.jobs}")
        if self.noise_n is not None and int(self.noise_n) < 1:
            raise UserError(f"noise_n (--noise-n) must be >= 1, got {self.noise_n}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "seeds", seeds)

    def command_line(self) -> str:
        """The ``logitnorm-ood tune-t`` command that asks for this tuning (defaults left out)."""
        parts = ["logitnorm-ood", "tune-t", "--dataset", str(self.dataset)]
        if self.arch is not None:
            parts += ["--arch", str(self.arch)]
        if self.recipe is not None:
            parts += ["--recipe", str(self.recipe)]
        parts += ["--grid", ",".join(t_text(t) for t in self.grid)]
        if self.epochs is not None:
            parts += ["--epochs", str(self.epochs)]
        parts += ["--seeds", ",".join(str(s) for s in self.seeds)]
        if self.batch_size is not None:
            parts += ["--batch-size", str(self.batch_size)]
        if self.lr is not None:
            parts += ["--lr", f"{self.lr:g}"]
        if float(self.acc_margin) != 0.01:
            parts += ["--acc-margin", f"{self.acc_margin:g}"]
        if self.metric != PAPER_FPR_KEY:
            parts += ["--metric", self.metric]
        if self.noise_n is not None:
            parts += ["--noise-n", str(self.noise_n)]
        if int(self.noise_seed) != VALIDATION_NOISE_SEED:
            parts += ["--noise-seed", str(self.noise_seed)]
        if int(self.jobs) != 1:
            parts += ["--jobs", str(self.jobs)]
        for flag, value in (("amp", self.amp), ("compile", self.compile)):
            if value is not None:
                parts.append(f"--{flag}" if value else f"--no-{flag}")
        if self.threads not in (None, "auto"):
            parts += ["--threads", str(self.threads)]
        parts += ["--out", str(self.out), "--device", str(self.device)]
        if self.loss != "logitnorm":
            parts += ["--loss", self.loss]
        return shlex.join(parts)
