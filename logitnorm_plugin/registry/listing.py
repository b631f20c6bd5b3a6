"""What ``logitnorm-ood list`` shows: one row per registered name (class, distribution, paper,
notes), read from the classes' ``info`` (never instantiated), or for this distribution's own
entries from the rows it ships (:mod:`logitnorm_plugin._core.registry_rows`), so listing does not
import pytorch-ood."""

from __future__ import annotations

import warnings
from importlib import metadata
from typing import Dict, List

from logitnorm_plugin._core.registry_rows import DESCRIPTIONS_FILE, shipped_rows
from logitnorm_plugin.registry.entry_points import (
    GROUPS,
    THIS_DISTRIBUTION,
    RegistryLoadError,
    RegistryWarning,
    entries,
)

__all__ = ["describe", "write_descriptions"]


def write_descriptions():
    """Rewrite the shipped ``list`` rows (:mod:`logitnorm_plugin._core.registry_rows`) from
    the classes; run it after changing an entry of this distribution."""
    from logitnorm_plugin._core.atomic import write_json

    rows = {f"{kind}:{entry.value}": {k: row[k] for k in ("class", "paper", "notes")}
            for kind in GROUPS
            for entry, row in zip(entries(kind), describe(kind, shipped=False))
            if entry.distribution == THIS_DISTRIBUTION}
    return write_json(DESCRIPTIONS_FILE, {"pytorch_ood": metadata.version("pytorch-ood"),
                                          "rows": rows})


def describe(kind: str, pattern: str | None = None, shipped: bool = True
             ) -> List[Dict[str, str]]:
    """
    One row per entry of ``kind`` for display: name, class, distribution, paper, notes.
    Imports each class to read its ``info`` (never instantiates); entries that fail to load
    are skipped with a warning. This distribution's own entries come from the shipped rows
    (:mod:`~logitnorm_plugin._core.registry_rows`) when ``shipped`` and they match the
    installed pytorch-ood.
    """
    rows = []
    known = shipped_rows() if shipped else {}
    for entry in entries(kind, pattern):
        ours = entry.distribution == THIS_DISTRIBUTION
        row = known.get(f"{kind}:{entry.value}") if ours else None
        if row is not None:
            rows.append({"name": entry.name, "class": row["class"],
                         "distribution": f"{entry.distribution} {entry.version}",
                         "paper": row["paper"], "notes": row["notes"]})
            continue
        try:
            cls = entry.load()
        except RegistryLoadError as exc:
            warnings.warn(f"Skipping: {exc}", RegistryWarning, stacklevel=2)
            continue
        info = getattr(cls, "info", None)
        paper = getattr(info, "paper", None)
        rows.append(
            {
                "name": entry.name,
                "class": f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}",
                "distribution": f"{entry.distribution} {entry.version}",
                "paper": _paper_text(paper),
                "notes": _notes(kind, cls),
            }
        )
    return rows


def _paper_text(paper) -> str:
    """``title (venue year)`` of a pytorch-ood ``Paper``; a plugin's ``info.paper`` of another
    type (a plain string, a dict) is shown as its text, never an error."""
    if not paper:
        return "-"
    if all(hasattr(paper, a) for a in ("title", "venue", "year")):
        return f"{paper.title} ({paper.venue} {paper.year})"
    return str(paper)


def _notes(kind: str, cls: type) -> str:
    if kind == "loss":
        # lazy: `list` stays torch-free; these notes are only read for a loss that is shown
        from logitnorm_plugin.objectives import needs_outliers, objective_values
        from logitnorm_plugin.registry.split import loss_parts

        parts = loss_parts(cls)
        notes = [f"binds the model's {' and '.join(parts)}"] if parts else []
        if needs_outliers(cls):
            ratio = objective_values(cls).ratio
            notes.append(f"needs outliers (--outliers), {ratio:g} per ID image")
        return ", ".join(notes)
    if kind != "detector":
        return ""
    from pytorch_ood.api import GradientDetector

    notes = []
    if getattr(cls, "requires_fit", False):
        notes.append("needs fit")
    if isinstance(cls, type) and issubclass(cls, GradientDetector):
        notes.append("gradients")
    return ", ".join(notes)
