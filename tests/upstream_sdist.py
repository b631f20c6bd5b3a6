"""The pytorch-ood source distribution the upstream-route tests apply patches to.

``.ci/run`` fetches it once (``pip download --no-binary :all: --no-deps
pytorch-ood==<installed> -d ~/.cache/logitnorm-plugin/sdist``; the folder is
``$LOGITNORM_PYTORCH_OOD_SDIST_DIR`` when set). Without it a test skips, except under
``CI=true``, where it fails: CI must never pass by skipping them.
"""

import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest

from logitnorm_plugin.reporting.upstream_patch import sdist_cache_dir


def sdist_archive() -> Path:
    installed = version("pytorch-ood")
    path = sdist_cache_dir() / f"pytorch_ood-{installed}.tar.gz"
    if not path.is_file():
        why = (f"no pytorch-ood {installed} source distribution at {path}: fetch it with `pip "
               f"download --no-binary :all: --no-deps pytorch-ood=={installed} -d {path.parent}`")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return path


def unpack_sdist(dest: Path) -> Path:
    """A fresh copy of the source distribution's tree under ``dest``; its root."""
    with tarfile.open(sdist_archive()) as archive:
        archive.extractall(dest, filter="data")
    (root,) = [p for p in dest.iterdir() if p.is_dir()]
    return root


def apply_patch(root: Path, patch: Path) -> None:
    """``patch -p1`` in ``root``, failing on any rejected hunk."""
    if shutil.which("patch") is None:
        pytest.fail("the `patch` program is missing (apt-get install patch)")
    done = subprocess.run(["patch", "-p1", "--batch", "--forward", "-i", str(patch)], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(root.rglob("*.rej")), done.stdout


def run_in_source(root: Path, args, tmp_path: Path, timeout=600, **env):
    """``python ARGS`` in the patched tree with ``PYTHONPATH=src`` (pytorch-ood from there)."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("PYTEST_", "COV_"))}
    environment.update(PYTHONPATH="src", PYTHONDONTWRITEBYTECODE="1", **env)
    return subprocess.run([sys.executable, *args], cwd=root, env=environment,
                          capture_output=True, text=True, timeout=timeout)
