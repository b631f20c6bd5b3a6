"""What pytorch-ood lacks, as a ``git format-patch`` series against its source.

``logitnorm-ood upstream-patch --out DIR`` writes three patches in pytorch-ood's own
conventions:

1. ``detector: add LogitNormDetector``: ``src/pytorch_ood/detector/logitnorm.py`` (the class
   with its own ``info`` record and the paper, a docstring with the formula and the
   functional form :func:`logitnorm_score`, the normalisation of pytorch-ood's
   ``logit_norm_loss``, so detector and loss agree) and its export from
   ``pytorch_ood.detector``;
2. ``tests: LogitNormDetector``: ``tests/detectors/test_logitnorm.py`` (pytorch-ood's test
   layout: ``unittest``, ``src.pytorch_ood`` imports; the score against the formula written
   out, per-pixel segmentation scores, invariance to the scale of the logits), its builder in
   ``SEGMENTATION_DETECTORS`` of ``tests/test_info.py`` (the detector claims segmentation) and,
   where the source has it, its line in ``tests/detectors/test_all_detectors_smoke.py``;
3. ``docs: LogitNorm detector page``: ``docs/detector/logitnorm.rst``.

The series is made by ``git`` itself in a scratch repository whose first commit holds the
source files the patches change, copied from ``source`` (a pytorch-ood checkout or source
distribution folder, or its ``.tar.gz``): the patches apply to that source with ``git am``,
``git apply`` or ``patch -p1``. A file the source does not have (the source distribution ships
no ``tests/detectors/``) is not changed, and the commit message says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from logitnorm_plugin._core.errors import MissingDataError, UserError
from logitnorm_plugin.reporting import _upstream_sources as sources

__all__ = ["SeriesRequest", "default_source", "sdist_cache_dir", "write_series"]

#: environment variable naming the folder that holds pytorch-ood's source distributions
SDIST_ENV = "LOGITNORM_PYTORCH_OOD_SDIST_DIR"

_INIT = "src/pytorch_ood/detector/__init__.py"
_TEST_INFO = "tests/test_info.py"
_SMOKE = "tests/detectors/test_all_detectors_smoke.py"
_CHANGED = (_INIT, _TEST_INFO, _SMOKE)
_DATE = "2022-07-17T00:00:00+00:00"  # fixed dates: the same input gives the same series


def sdist_cache_dir() -> Path:
    """Where ``pip download --no-binary :all: --no-deps pytorch-ood==<version> -d DIR`` puts
    the source distribution: ``$LOGITNORM_PYTORCH_OOD_SDIST_DIR``, else
    ``~/.cache/logitnorm-plugin/sdist``."""
    return Path(os.environ.get(SDIST_ENV) or Path.home() / ".cache" / "logitnorm-plugin" / "sdist")


def default_source() -> Path:
    """The cached source distribution of the installed pytorch-ood version.

    :raises MissingDataError: naming the ``pip download`` command that fetches it
    """
    from importlib.metadata import version

    installed = version("pytorch-ood")
    path = sdist_cache_dir() / f"pytorch_ood-{installed}.tar.gz"
    if not path.is_file():
        raise MissingDataError(
            f"no pytorch-ood {installed} source distribution at {path}; fetch it once with "
            f"`pip download --no-binary :all: --no-deps pytorch-ood=={installed} -d "
            f"{path.parent}` or give --source (a pytorch-ood checkout)"
        )
    return path


def _source_root(source: Path, scratch: Path) -> Path:
    """A folder holding the source tree (a ``.tar.gz`` is unpacked into ``scratch``)."""
    if source.is_dir():
        root = source
    elif source.is_file() and source.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(source) as archive:
            # only the files the series changes, plain files with plain relative names
            members = [m for m in archive.getmembers()
                       if m.isfile() and any(m.name.endswith("/" + c) for c in _CHANGED)
                       and not m.name.startswith("/") and ".." not in m.name.split("/")]
            for member in members:
                target = scratch / "sdist" / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
        tops = [p for p in (scratch / "sdist").iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise UserError(f"{source} is not a pytorch-ood source distribution")
        root = tops[0]
    else:
        raise UserError(f"--source {source}: neither a folder nor a .tar.gz")
    if not (root / _INIT).is_file():
        raise UserError(f"{source} holds no {_INIT}: not pytorch-ood's source")
    return root


def _git(repo: Path, *args: str, author: str) -> str:
    name, _, email = author.partition(" <")
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">"),
           "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email.rstrip(">"),
           "GIT_AUTHOR_DATE": _DATE, "GIT_COMMITTER_DATE": _DATE,
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)}
    done = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise UserError(f"git {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def _insert_import(text: str) -> str:
    """``from .logitnorm import LogitNormDetector`` in the sorted ``from .x import`` block."""
    line = "from .logitnorm import LogitNormDetector"
    lines = text.split("\n")
    imports = [i for i, s in enumerate(lines) if re.match(r"from \.\w+ import ", s)]
    if not imports:
        raise UserError(f"{_INIT}: no `from .module import Class` lines to add to")
    after = [i for i in imports if lines[i].split()[1] > ".logitnorm"]
    lines.insert(after[0] if after else imports[-1] + 1, line)
    return "\n".join(lines)


def _insert_segmentation_builder(text: str) -> str:
    """The detector's builder in ``SEGMENTATION_DETECTORS`` (sorted by class name)."""
    start = text.find("SEGMENTATION_DETECTORS = {")
    end = text.find("\n}\n", start)
    if start < 0 or end < 0:
        raise UserError(f"{_TEST_INFO}: no SEGMENTATION_DETECTORS = {{...}} to add to")
    body = text[start:end].split("\n")
    new = ("    detector.LogitNormDetector: lambda: "
           "detector.LogitNormDetector(SegmentationModel().eval()),")
    keyed = [i for i, s in enumerate(body) if re.match(r"    detector\.\w+:", s)]
    later = [i for i in keyed
             if body[i].split(":")[0].strip().lower() > "detector.logitnormdetector"]
    body.insert(later[0] if later else len(body), new)
    return text[:start] + "\n".join(body) + text[end:]


def _insert_smoke(text: str) -> str:
    """The detector in the all-detectors smoke test: imported, and built after MSP."""
    block = re.search(r"from src\.pytorch_ood\.detector import \(\n(.*?)\n\)", text, re.S)
    msp = re.search(r'\n(\s*)\("MSP", lambda: MaxSoftmax\(eval_model\(\)\)\),\n', text)
    if block is None or msp is None:
        raise UserError(f"{_SMOKE}: the import block or the MSP line is not where expected")
    names = block.group(1).split("\n")
    later = [i for i, s in enumerate(names) if s.strip().rstrip(",") > "LogitNormDetector"
             and s.strip()[:1].isupper() and not s.strip().rstrip(",").isupper()]
    names.insert(later[0] if later else len(names), "    LogitNormDetector,")
    text = text[:block.start(1)] + "\n".join(names) + text[block.end(1):]
    msp = re.search(r'\n(\s*)\("MSP", lambda: MaxSoftmax\(eval_model\(\)\)\),\n', text)
    line = f'{msp.group(1)}("LogitNorm", lambda: LogitNormDetector(eval_model())),\n'
    return text[:msp.end()] + line + text[msp.end():]


@dataclass(frozen=True)
class SeriesRequest:
    """What :func:`write_series` writes.

    :param out: folder for the ``000N-*.patch`` files
    :param source: pytorch-ood source tree or source distribution (default:
        :func:`default_source`)
    :param author: ``Name <email>`` of the patches
    """

    out: Path
    source: Path | None = None
    author: str = "logitnorm-plugin contributors <logitnorm-plugin@users.noreply.github.com>"


def _write(repo: Path, rel: str, text: str) -> None:
    path = repo / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_series(request: SeriesRequest) -> list[Path]:
    """Write the patch series (see the module docstring).

    :return: the patch files, in order
    :raises MissingDataError: without ``source`` and without the cached source distribution
    :raises UserError: if ``git`` is missing or the source does not look like pytorch-ood's
    """
    if shutil.which("git") is None:
        raise UserError("upstream-patch needs git (it writes a `git format-patch` series)")
    source = Path(request.source) if request.source is not None else default_source()
    out = Path(request.out)
    with tempfile.TemporaryDirectory(prefix="logitnorm-upstream-") as scratch:
        scratch = Path(scratch)
        root = _source_root(source, scratch)
        repo = scratch / "repo"
        repo.mkdir()
        git = lambda *a: _git(repo, *a, author=request.author)  # noqa: E731
        git("init", "-q")
        present = [rel for rel in _CHANGED if (root / rel).is_file()]
        for rel in present:
            _write(repo, rel, (root / rel).read_text(encoding="utf-8"))
        git("add", "-A")
        git("commit", "-q", "-m", "pytorch-ood source (base)")
        _write(repo, _INIT, _insert_import((repo / _INIT).read_text(encoding="utf-8")))
        _write(repo, "src/pytorch_ood/detector/logitnorm.py", sources.DETECTOR)
        git("add", "-A")
        git("commit", "-q", "-m", sources.DETECTOR_MESSAGE)
        _write(repo, "tests/detectors/test_logitnorm.py", sources.UNIT_TEST)
        if _TEST_INFO in present:
            _write(repo, _TEST_INFO, _insert_segmentation_builder(
                (repo / _TEST_INFO).read_text(encoding="utf-8")))
        if _SMOKE in present:
            _write(repo, _SMOKE, _insert_smoke((repo / _SMOKE).read_text(encoding="utf-8")))
        missing = [rel for rel in (_TEST_INFO, _SMOKE) if rel not in present]
        note = (f"\n\nNot in the source this series was made from, so not changed: "
                f"{', '.join(missing)}." if missing else "")
        git("add", "-A")
        git("commit", "-q", "-m", sources.TEST_MESSAGE + note)
        _write(repo, "docs/detector/logitnorm.rst", sources.DOCS)
        git("add", "-A")
        git("commit", "-q", "-m", sources.DOCS_MESSAGE)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("000[0-9]-*.patch"):
            old.unlink()
        names = git("format-patch", "--no-signature", "-o", str(out.resolve()),
                    "HEAD~3..HEAD").splitlines()
    return [Path(n) for n in names if n.strip()]
