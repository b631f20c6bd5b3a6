"""Where a result came from: package versions, git commit, device, time.

Every file of results, every checkpoint and every model card carries this record, so a number
can always be traced to the code and machine that produced it.
"""

import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict, Mapping

_PACKAGES = ("logitnorm-plugin", "pytorch-ood", "torch", "torchvision", "numpy", "scipy")


def package_versions() -> Dict[str, str | None]:
    """Installed versions of the packages that determine our numbers (``None`` if absent)."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: "str | Path | None" = None) -> str | None:
    """The commit checked out at ``path`` (default: this package's folder, which is a git
    checkout for a development install), with ``-dirty`` appended when tracked files changed;
    ``None`` outside a git checkout (e.g. an installed wheel)."""
    cwd = str(path) if path is not None else str(Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device=None) -> str:
    """A human-readable name of ``device``, e.g. ``"cuda:0 (NVIDIA H100 80GB HBM3)"``."""
    import torch

    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()})"
    return str(device)


def collect(device=None, config: dict | None = None, **extra) -> dict:
    """The provenance record: versions, git commit, device, host, UTC time, config, extras."""
    record = {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "device": device_name(device),
        "host": platform.node(),
        "platform": platform.platform(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if config is not None:
        record["config"] = config
    record.update(extra)
    return record


def provenance_text(summary: Mapping) -> str:
    """One paragraph saying where the numbers of a provenance summary came from (see
    :meth:`logitnorm_plugin.store.results.ResultStore.provenance_summary`), for Markdown / RST
    files and reports."""

    def join(values, empty="unknown"):
        values = [str(v) for v in values or []]
        return ", ".join(values) if values else empty

    versions = summary.get("versions") or {}
    order = ["logitnorm-plugin", "pytorch-ood", "torch", "torchvision", "numpy", "scipy",
             "python"]
    names = [n for n in order if n in versions] + sorted(set(versions) - set(order))
    pkg = "; ".join(f"{n} {join(versions[n])}" for n in names) or "versions unknown"
    dates = summary.get("computed_utc") or []
    when = (dates[0] if dates and dates[0] == dates[-1] else
            f"{dates[0]} to {dates[-1]}" if dates else "unknown")
    text = (
        f"Provenance: computed with {pkg}; git commit {join(summary.get('git_commits'))}; "
        f"device {join(summary.get('devices'))}; seeds {join(summary.get('seeds'), 'none')}; "
        f"computed {when}; exported {summary.get('exported_utc', 'unknown')}."
    )
    commands = summary.get("commands") or []
    if commands:
        text += " Command: " + "; ".join(f"`{c}`" for c in commands) + "."
    return text
