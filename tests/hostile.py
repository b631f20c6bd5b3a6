"""Hostile inputs built the way an attacker builds them, for the tests of issue 22: a real
``*.dist-info`` folder (``METADATA`` + ``entry_points.txt`` + modules) for ``PYTHONPATH``, a
model card changed and resealed with the package's own digest function, and the command line
run in a fresh interpreter.

Test code (a plain helper module, as ``fake_data.py`` is).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from logitnorm_plugin._core.digests import json_sha256
from logitnorm_plugin.training.runs import CARD_DIGEST, CARD_FILE


def write_dist(root: Path, name: str, entry_points: str | bytes, modules: dict | None = None,
               metadata: str | None = None) -> Path:
    """``root/<name>-1.0.dist-info`` with ``entry_points.txt`` exactly as given (text or raw
    bytes: a malformed file is written as it is), and ``modules`` (module name -> source)
    beside it. Returns the dist-info folder."""
    dist = Path(root) / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(metadata if metadata is not None else
                                   f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    data = entry_points.encode() if isinstance(entry_points, str) else entry_points
    (dist / "entry_points.txt").write_bytes(data)
    for module, source in (modules or {}).items():
        (Path(root) / f"{module}.py").write_text(textwrap.dedent(source))
    return dist


def resealed_copy(run_dir: Path, dest: Path, **changes) -> Path:
    """A copy of a run folder whose model card has ``changes`` and a seal recomputed with the
    package's own :func:`json_sha256`, as anyone can."""
    shutil.copytree(run_dir, dest)
    path = dest / CARD_FILE
    card = json.loads(path.read_text())
    card.pop(CARD_DIGEST)
    card.update(changes)
    card[CARD_DIGEST] = json_sha256(card)
    path.write_text(json.dumps(card))
    return dest


def cli(*args, pythonpath: Path | None = None, env: dict | None = None, timeout: float = 300,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``logitnorm-ood ARGS`` in a fresh interpreter, with ``pythonpath`` first on its path."""
    environ = dict(os.environ)
    environ.pop("LOGITNORM_PLUGIN_NO_THIRD_PARTY", None)
    environ.update(env or {})
    if pythonpath is not None:
        environ["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "logitnorm_plugin.cli", *map(str, args)],
                          capture_output=True, text=True, env=environ, timeout=timeout,
                          cwd=cwd)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The lines of stderr that are errors (not warnings)."""
    return [line for line in result.stderr.splitlines() if ": error: " in line]


def one_line_refusal(result: subprocess.CompletedProcess) -> str:
    """The single error line of a command that must stop with exit status 2 and no
    traceback; fails the test otherwise."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]
