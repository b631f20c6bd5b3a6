"""Entry points of the installed distributions, one distribution at a time.

The rule: **one broken distribution never breaks the others.** :func:`importlib.metadata.
entry_points` parses every distribution's ``entry_points.txt`` in one go, so a single
malformed file anywhere on ``sys.path`` (a line without ``=``, bytes that are not UTF-8, an
unreadable ``METADATA``) raises out of every command. :func:`group_entry_points` reads each
distribution separately (the same walk and the same first-on-``sys.path``-wins rule for two
copies of one distribution as the standard library's), skips one it cannot read with a warning
naming it and its ``*.dist-info`` folder, and keeps the rest.

A distribution is filtered by its name *before* its entry points are read, so a caller that
keeps only some distributions (``LOGITNORM_PLUGIN_NO_THIRD_PARTY=1``) is never stopped by the
files of the others.

Hand-written because the standard library has no per-distribution error handling for this;
torch-free.
"""

from __future__ import annotations

import re
import warnings
from importlib import metadata
from typing import Callable, List

from logitnorm_plugin._core.errors import one_line

__all__ = ["distribution_name", "distribution_path", "group_entry_points"]


def distribution_name(dist) -> str | None:
    """The normalised ``Name`` of a distribution's metadata (``my_pkg.x`` -> ``my-pkg-x``);
    ``None`` when it has none (a damaged install). ``.get`` never warns, where
    ``metadata["Name"]`` is deprecated for a missing field on newer Pythons."""
    name = dist.metadata.get("Name") if dist is not None else None
    return re.sub(r"[-_.]+", "-", str(name)).lower() if name else None


def distribution_path(dist) -> str:
    """Where a distribution's metadata lives, for messages (its ``*.dist-info`` folder)."""
    path = getattr(dist, "_path", None)  # PathDistribution; there is no public accessor
    return str(path) if path is not None else str(dist.locate_file(""))


def _unique_key(dist) -> str:
    # the standard library's key for "the same distribution found twice": its normalised name
    # from the folder name (falling back to METADATA); private there, so guarded here
    try:
        return str(dist._normalized_name)
    except Exception:  # a damaged folder: never merged with another one
        return distribution_path(dist)


def group_entry_points(group: str, keep: Callable[[str | None], bool] | None = None,
                       warning: type[Warning] = UserWarning) -> List[metadata.EntryPoint]:
    """The entry points of ``group`` over every installed distribution that can be read.

    :param group: e.g. ``"pytorch_ood.detectors"``
    :param keep: called with each distribution's normalised name (``None`` for a distribution
        without one); a distribution it rejects is never read further
    :param warning: the category of the warning for a distribution that is skipped
    :return: the entry points, in ``sys.path`` order
    """
    found: List[metadata.EntryPoint] = []
    seen = set()
    for dist in metadata.distributions():
        try:
            key = _unique_key(dist)
            if key in seen:
                continue
            seen.add(key)
            if keep is not None and not keep(distribution_name(dist)):
                continue
            found += list(dist.entry_points.select(group=group))
        except Exception as exc:  # a malformed file of one distribution, never the others
            warnings.warn(
                f"Skipping the distribution {_label(dist)} at {distribution_path(dist)}: its "
                f"metadata or entry_points.txt cannot be read ({type(exc).__name__}: "
                f"{one_line(exc, 160)}); reinstall or remove that package.",
                warning,
                stacklevel=2,
            )
    return found


def _label(dist) -> str:
    try:
        return repr(distribution_name(dist) or "(no Name)")
    except Exception:  # METADATA itself unreadable
        return "(unreadable METADATA)"
