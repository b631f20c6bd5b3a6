"""The ``logitnorm-ood list`` rows of this distribution's own entries, shipped as JSON so that
listing need not import pytorch-ood (seconds on a small CPU) to print them. Valid only for the
pytorch-ood version they were written with; ``tests/test_small_points.py`` compares them with
the classes, and :func:`logitnorm_plugin.registry.listing.write_descriptions` rewrites them.
Torch-free."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

__all__ = ["DESCRIPTIONS_FILE", "shipped_rows"]

DESCRIPTIONS_FILE = Path(__file__).resolve().parent.parent / "registry_descriptions.json"


def shipped_rows() -> dict[str, dict[str, str]]:
    """``"<kind>:<entry point value>"`` -> ``{"class", "paper", "notes"}``; empty when the file
    is missing, damaged or written for another pytorch-ood version."""
    try:
        doc = json.loads(DESCRIPTIONS_FILE.read_text(encoding="utf-8"))
        if doc.get("pytorch_ood") != metadata.version("pytorch-ood"):
            return {}
        return dict(doc["rows"])
    except (OSError, ValueError, KeyError, AttributeError, metadata.PackageNotFoundError):
        return {}
