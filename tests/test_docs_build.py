"""The documentation: the reference builds with Sphinx without a warning, and the README stays
a first-hour page (the reference lives in docs/)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_a_first_hour_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 350, f"README.md has {len(lines)} lines: move reference text to docs/"
    headings = [line for line in lines if line.startswith("#")]
    assert len(headings) == len(set(headings)), "a heading appears twice in README.md"


@pytest.mark.slow
def test_sphinx_builds_the_reference_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
         str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "html" / "api.html").is_file()
