"""Run folders that ``bench`` trains into ``OUT/runs``: whether one already holds a model of
other settings, and what to do then (refuse, naming what differs, or with ``--force`` move it
aside; never delete it)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin._core.tables import plural
from logitnorm_plugin.training.runs import CONFIG_FILE, config_differences, read_config

_log = logging.getLogger(__name__)

__all__ = ["replace_or_refuse", "stored_differences"]


def stored_differences(run_dir: Path, config: dict) -> tuple:
    """How the configuration of the run already in ``run_dir`` differs from ``config``."""
    if not (run_dir / CONFIG_FILE).is_file():
        return ()
    return tuple(config_differences(read_config(run_dir), config))


def replace_or_refuse(requests, out: Path, force: bool) -> None:
    """Models of another configuration in ``out/runs``: a clear refusal offering ``--out`` and
    ``--force``, or with ``force`` their run folders moved aside (never deleted)."""
    stale = [r for r in requests if r.differs]
    if not stale:
        return
    if not force:
        first = stale[0]
        raise UserError(
            f"{out} already holds models trained with other settings: {first.run_dir.name} "
            f"differs in {'; '.join(first.differs)}"
            + (f" (and {plural(len(stale) - 1, 'more run folder')})" if len(stale) > 1 else "")
            + ". bench reuses the models of its --out folder: choose another --out for these "
            "settings, or add --force to retrain them there (the old run folders are moved "
            "aside)"
        )
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for request in stale:
        aside = request.run_dir.with_name(f"{request.run_dir.name}.replaced-{stamp}")
        request.run_dir.rename(aside)
        _log.warning(f"bench: --force: {request.run_dir.name} was trained with other settings; "
                     f"moved to {aside}")
