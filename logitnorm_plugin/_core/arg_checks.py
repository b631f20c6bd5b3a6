"""Checks of command-line values that need no data and no torch, made before anything heavy is
imported (an argument error answers at once instead of after pytorch-ood has loaded). The
messages are those of :class:`~logitnorm_plugin.training.config.TrainConfig`, which checks the
same values again for Python callers. Torch-free."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from logitnorm_plugin._core.errors import UsageError, UserError

__all__ = [
    "MAX_SEED", "check_counts", "check_model_paths", "check_thread_count", "check_values",
    "out_path",
]

#: largest seed numpy accepts
MAX_SEED = 2**32 - 1


def check_values(epochs=None, batch_size=None, lr=None, seeds: Iterable = (), t=None,
                 num_workers=None, lock_timeout=None) -> None:
    """:raises UserError: for a value out of range (``None``: not given, not checked)"""
    if epochs is not None and epochs < 1:
        raise UserError(f"the number of epochs must be >= 1, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"the batch size must be >= 1, got {batch_size}")
    if lr is not None and not lr > 0:
        raise UserError(f"the learning rate must be > 0, got {lr}")
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise UserError(f"the seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    if t is not None and not t > 0:
        raise UserError(f"--t must be > 0, got {t}")
    if num_workers is not None and num_workers < 0:
        raise UserError(f"--num-workers must be >= 0, got {num_workers}")
    if lock_timeout is not None and lock_timeout < 0:
        raise UserError(f"--lock-timeout must be >= 0 seconds, got {lock_timeout}")


def check_counts(**counts) -> None:
    """Counts that must be >= 1 where given (``None``: not given, not checked), named by their
    option: ``check_counts(noise_n=0)`` fails with ``--noise-n must be >= 1, got 0``.

    :raises UserError: for a count below 1
    """
    for name, value in counts.items():
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def check_thread_count(count: int) -> int:
    """A thread count of ``--threads``: from 1 to the CPU cores of this machine
    (``os.cpu_count()``). More threads than cores never run faster, and a huge count makes
    OpenMP start that many threads (100000 exhausts memory and crashes the process).

    :raises UserError: for a count out of that range
    """
    cores = os.cpu_count() or 1
    if count < 1:
        raise UserError(f"--threads must be >= 1, got {count}")
    if count > cores:
        raise UserError(f"--threads {count} is more than the {cores} CPU cores of this machine: "
                        f"give at most {cores}, or auto")
    return count


def out_path(value, option: str = "--out") -> Path:
    """The output folder ``value`` as a :class:`~pathlib.Path`; the one rule for every command
    and function that writes into a folder it is given (``train``, ``bench``, ``tune-t``,
    ``export``, ``report``, ``upstream-patch``): an empty path is refused, never taken as the
    current folder (``Path("")`` is ``.``, so the check must come before the conversion).

    :raises UsageError: (a ``ValueError``) one line for ``""`` or a path of blanks
    """
    if isinstance(value, (str, bytes)) and not value.strip():
        raise UsageError(
            f"the output folder ({option}) is an empty path: name a folder, e.g. "
            f"{option} results ({option} . for the current folder)"
        )
    return Path(value)


def _looks_like_path(spec: str) -> bool:
    """A ``--models`` item meant as a folder: it starts like a path, or its first part is an
    existing folder (``runs/x`` next to ``runs/``); registry keys start with an architecture."""
    if spec.startswith((".", "/", "~")) or os.sep != "/" and os.sep in spec:
        return True
    head = spec.split("/", 1)[0]
    return "/" in spec and Path(head).is_dir()


def check_model_paths(models: Iterable[str]) -> None:
    """:raises UserError: for a ``--models`` item that is meant as a run folder (see
    :func:`_looks_like_path`) but does not exist, naming the folders next to it"""
    for item in models:
        spec = item.split("=", 1)[1] if "=" in item and not os.path.exists(item) else item
        spec = spec.strip()
        if not spec or os.path.exists(spec) or not _looks_like_path(spec):
            continue
        parent = Path(spec).expanduser().parent
        near = sorted(p.name for p in parent.iterdir() if p.is_dir())[:8] if parent.is_dir() \
            else []
        raise UserError(
            f"--models {item!r}: no such run folder {spec!r}"
            + (f" ({parent}/ holds: {', '.join(near)})" if near else "")
        )
