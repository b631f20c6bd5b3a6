"""Published reference numbers (``published_numbers.json``) and which of them match a row.

The file ships in the package (an installed wheel needs it) and holds facts collected from the
LogitNorm paper's baselines, the OpenOOD v1.5 leaderboard and pytorch-ood's registry, each
with its source. Tables put a matched number beside ours, never in place of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources

from logitnorm_plugin._core.conventions import canonical_name

__all__ = ["load_published", "match_published"]


def load_published() -> dict:
    """The published reference numbers shipped with the package."""
    text = resources.files(__package__).joinpath("published_numbers.json").read_text(
        encoding="utf-8"
    )
    return json.loads(text)


def _same(a, b) -> bool:
    return canonical_name(a) == canonical_name(b)


def match_published(
    benchmark: str, protocol: str, arch: str | None, loss: str | None,
    detector: str | None, published: Mapping | None = None,
) -> list[dict]:
    """Published entries for one table row: same benchmark, protocol (or any), architecture,
    training loss and detector (or any, for ID-only numbers). Nothing matches a model whose
    architecture is unknown."""
    published = published if published is not None else load_published()
    if arch is None or loss is None:
        return []
    found = []
    benchmark = canonical_name(benchmark)  # the row's name, read once for all entries
    for entry in published.get("entries", []):
        if canonical_name(entry["benchmark"]) != benchmark:
            continue
        if entry.get("protocol") is not None and entry["protocol"] != protocol:
            continue
        if not any(_same(arch, a) for a in entry.get("arch", [])):
            continue
        if not _same(entry["loss"], loss):
            continue
        if entry.get("detector") is not None and not _same(entry["detector"], detector):
            continue
        found.append(entry)
    return found
