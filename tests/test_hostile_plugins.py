"""Issue 22, points 2 and 10: hostile or broken plugins, as real ``*.dist-info`` folders on
``PYTHONPATH`` of a fresh ``logitnorm-ood`` process.

- an architecture entry point naming ``os:system`` (or a class that is not a
  ``torch.nn.Module``) plus a resealed model card that asks for it: nothing is called, one
  line, exit status 2;
- a malformed ``entry_points.txt`` (a line without ``=``, bytes that are not UTF-8) skips that
  distribution with a warning naming it, with and without ``LOGITNORM_PLUGIN_NO_THIRD_PARTY``;
- ``info.paper`` as a string; an architecture whose module is missing; a plugin that loops
  while it is imported (the per-plugin import deadline of ``_core/deadline.py``).
"""

import json
import os
import subprocess
import sys

import pytest
from hostile import cli, error_lines, one_line_refusal, resealed_copy, write_dist

from logitnorm_plugin.registry.architectures import ARCH_GROUP

EVIL_MODULE = """
class NotAModule:
    # were it ever built, it would leave this file behind
    def __init__(self, path, **kwargs):
        open(path, "w").write("built")
"""


@pytest.mark.parametrize("arch_class", ["os.system", "evil_nets.NotAModule"])
def test_a_resealed_card_cannot_call_what_an_architecture_entry_point_names(
        run_dir, tmp_path, arch_class):
    """Fails on main (7154034 and a1c8538): ``os.system`` runs the card's command and
    ``NotAModule`` is built, before "did not build a torch module"."""
    site = tmp_path / "site"
    write_dist(site, "evil-nets",
               f"[{ARCH_GROUP}]\nevil = os:system\nnotmod = evil_nets:NotAModule\n",
               {"evil_nets": EVIL_MODULE})
    marker = tmp_path / "called"
    kwargs = ({"command": f"touch {marker}"} if arch_class == "os.system"
              else {"path": str(marker)})
    run = resealed_copy(run_dir, tmp_path / "run", arch_class=arch_class, arch_kwargs=kwargs)
    for args in (["bench", "--models", run, "--detectors", "msp", "--out", tmp_path / "out"],
                 ["export", "--model", run]):
        line = one_line_refusal(cli(*args, pythonpath=site))
        assert "evil-nets" in line and "torch.nn.Module subclass" in line, line
        assert not marker.exists(), f"{arch_class} was called by {args[0]}"


def test_a_malformed_entry_points_file_skips_only_its_distribution(tmp_path):
    """Fails on main: every command dies with a TypeError / UnicodeDecodeError traceback."""
    site = tmp_path / "site"
    write_dist(site, "no-equals", "[pytorch_ood.detectors]\nthis line has no equals sign\n")
    write_dist(site, "not-utf8", b"[pytorch_ood.detectors]\nx = caf\xe9:X\n")
    result = cli("list", "detectors", pythonpath=site)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "msp" in result.stdout and "logitnorm" in result.stdout
    for name in ("no-equals", "not-utf8"):
        assert any("Skipping the distribution" in line and name in line
                   for line in result.stderr.splitlines()), result.stderr
    # with third-party entry points switched off, the broken files are not even read
    quiet = cli("list", "detectors", pythonpath=site,
                env={"LOGITNORM_PLUGIN_NO_THIRD_PARTY": "1"})
    assert quiet.returncode == 0 and "msp" in quiet.stdout, quiet.stderr[-3000:]
    assert "Skipping" not in quiet.stderr and "Traceback" not in quiet.stderr


PAPER_AS_TEXT = """
from pytorch_ood.api import DetectorInfo, LogitsDetector, Task


class TextPaper(LogitsDetector):
    info = DetectorInfo(paper="Some Workshop Paper, 2026", tasks={Task.CLASSIFICATION})

    def __init__(self, model):
        super().__init__()
        self.model = model

    def predict_logits(self, logits):
        return -logits.max(dim=1).values
"""


def test_info_paper_as_a_string_is_listed(tmp_path):
    """Fails on main: ``AttributeError: 'str' object has no attribute 'title'``."""
    site = tmp_path / "site"
    write_dist(site, "text-paper",
               "[pytorch_ood.detectors]\ntext_paper = text_paper:TextPaper\n",
               {"text_paper": PAPER_AS_TEXT})
    result = cli("list", "detectors", pythonpath=site)
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("text_paper"))
    assert "Some Workshop Paper, 2026" in row and "text-paper" in row


def test_a_missing_architecture_module_is_one_line_naming_the_plugin(run_dir, tmp_path):
    """Fails on main: a raw ``ModuleNotFoundError`` traceback."""
    site = tmp_path / "site"
    write_dist(site, "gone-nets", f"[{ARCH_GROUP}]\ngone = gone_nets.deleted:Net\n")
    run = resealed_copy(run_dir, tmp_path / "run", arch_class="gone_nets.deleted.Net",
                        arch_kwargs={"num_classes": 10})
    line = one_line_refusal(cli("export", "--model", run, pythonpath=site))
    assert "gone-nets" in line and "ModuleNotFoundError" in line, line


LOOPING = """
import time
while True:  # a plugin that never finishes importing
    time.sleep(0.05)
"""

SWALLOWING = """
import time
while True:  # ... and swallows every exception raised into it
    try:
        time.sleep(0.05)
    except Exception:
        pass
"""


@pytest.mark.parametrize("source", [LOOPING, SWALLOWING], ids=["loops", "swallows"])
def test_a_plugin_that_loops_at_import_is_named_not_waited_for(tmp_path, source):
    """Fails on main: ``list`` and ``--detectors all`` never return (here: the subprocess
    timeout)."""
    site = tmp_path / "site"
    write_dist(site, "stuck-plugin",
               "[pytorch_ood.detectors]\nstuck = stuck_plugin:Stuck\n", {"stuck_plugin": source})
    env = {"LOGITNORM_PLUGIN_IMPORT_TIMEOUT": "3"}
    result = cli("list", "detectors", pythonpath=site, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "msp" in result.stdout and "stuck" not in result.stdout
    warning = [line for line in result.stderr.splitlines() if "stuck_plugin" in line]
    assert warning and "stuck-plugin" in warning[0] and "within 3 s" in warning[0], \
        result.stderr
    assert not error_lines(result)
    # what `bench --detectors all` resolves: every detector that imports, the stuck one named
    code = ("import json, warnings\n"
            "from logitnorm_plugin.workflows.bench import _every_detector\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    names = _every_detector()\n"
            "print(json.dumps({'names': names, 'warnings': [str(w.message) for w in seen]}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert "msp" in found["names"] and "stuck" not in found["names"]
    assert any("stuck-plugin" in w and "within 3 s" in w for w in found["warnings"])
