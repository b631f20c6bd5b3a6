"""Issue 22, points 4, 5 and the bad card values of point 11: model cards changed and resealed
the way an attacker does (the seal recomputed with the package's own ``json_sha256``), used by
the real commands in a fresh process.

- ``arch_kwargs`` that would allocate gigabytes (``width=9000``) are refused before any memory
  is allocated (the network is built on the ``meta`` device and compared with the weights'
  shapes); ``width=-1`` and ``width=1e9`` are one line; ``export --model`` exports only what
  loads;
- card text (``loss``, ``key``) holding a newline, a README section's end marker, HTML and
  pipes stays inside its table cell in the bench README section, the exported tables and the
  report (``_core/escape.py``);
- ``t="abc"``, ``std`` 0 and friends: one line, exit status 2.
"""

import json
import re

import pytest
from hostile import cli, one_line_refusal, resealed_copy
from parsers import parse_markdown, parse_report_tables

from logitnorm_plugin.reporting.bench_output import README_END, README_START


def _kwargs(run_dir, **changes):
    card = json.loads((run_dir / "model.json").read_text())
    return {**card["arch_kwargs"], **changes}


# the process may use its current address space plus this much: building DigitsCNN with
# width 9000 needs two 9000 x 9000 x 3 x 3 float convolutions, 5.8 GB
_HEADROOM = 1.5 * 2**30
LIMITED = """
import resource, sys
from logitnorm_plugin.cli import main
import torch, torchvision, pytorch_ood.model  # noqa: F401 - what loading imports anyway

vm = int(open("/proc/self/status").read().split("VmPeak:")[1].split()[0]) * 1024
limit = vm + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("width, says", [
    (9000, "do not fit the architecture"),  # then: nothing was allocated
    (10**9, "overflowed"),  # the meta device refuses the sizes themselves
])
def test_a_card_cannot_make_the_loader_allocate_before_the_shape_check(run_dir, tmp_path,
                                                                       width, says):
    """Fails on main: the constructor allocates 5.8 GB (here: past the address-space limit,
    a raw RuntimeError traceback) before the state dict's shapes are compared."""
    import subprocess
    import sys

    run = resealed_copy(run_dir, tmp_path / "run", arch_kwargs=_kwargs(run_dir, width=width))
    for args in (["export", "--model", run],
                 ["bench", "--models", run, "--detectors", "msp", "--out", tmp_path / "out"]):
        result = subprocess.run([sys.executable, "-c", LIMITED, str(int(_HEADROOM)),
                                 *map(str, args)], capture_output=True, text=True, timeout=300)
        line = one_line_refusal(result)
        assert says in line and "model.json" in line, line
        if width == 9000:
            assert "nothing was allocated" in line and "(9000, 1, 3, 3)" in line, line


@pytest.mark.parametrize("width, says", [(-1, "negative dimension"),
                                         (1e9, "must be tuple of ints")])
def test_arch_kwargs_the_class_rejects_are_one_line(run_dir, tmp_path, width, says):
    """Fails on main for -1: a raw ``RuntimeError`` traceback; ``export --model`` printed an
    entry for every one of them without building the model."""
    run = resealed_copy(run_dir, tmp_path / "run", arch_kwargs=_kwargs(run_dir, width=width))
    result = cli("export", "--model", run)
    line = one_line_refusal(result)
    assert "rejects the arguments" in line and says in line, line
    assert "ModelEntry(" not in result.stdout


@pytest.mark.parametrize("changes, says", [
    ({"t": "abc"}, "'t' is 'abc'"),
    ({"t": -1.0}, "'t' is '-1.0'"),
    ({"preprocessing": {"mean": [0.3], "std": [0.0], "size": [8, 8]}}, "preprocessing.std"),
    ({"preprocessing": {"mean": [0.3], "std": [0.3, 0.3], "size": [8, 8]}},
     "preprocessing.std"),
    ({"preprocessing": {"mean": ["x"], "std": [1.0], "size": [8, 8]}}, "preprocessing.mean"),
    ({"loss": ["logitnorm"]}, "'loss' is list"),
    ({"arch_kwargs": ["width", 9]}, "'arch_kwargs'"),
])
def test_bad_card_values_are_one_line(run_dir, tmp_path, changes, says):
    """Fails on main: ``float('abc')`` is a raw ValueError; ``std`` 0 gives infinite inputs."""
    run = resealed_copy(run_dir, tmp_path / "run", **changes)
    for args in (["bench", "--models", run, "--detectors", "msp", "--out", tmp_path / "out"],
                 ["export", "--model", run]):
        line = one_line_refusal(cli(*args))
        assert says in line and "model.json" in line, line


HOSTILE = ("logitnorm\n" + README_END + "\n# INJECTED <script>alert(1)</script> | x | y |\n"
           "<!-- open")


def _assert_escaped(text: str, what: str):
    assert "<script>" not in text, what
    assert "\n# INJECTED" not in text, what
    # every HTML comment that opens closes on its own line: none was opened or closed by card
    # text
    for line in text.splitlines():
        assert line.count("<!--") == line.count("-->"), (what, line)


def _pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def _assert_tables_intact(text: str, what: str):
    """Each table's rows have as many (unescaped) pipes as its header."""
    block = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            assert {_pipes(row) for row in block} == {_pipes(block[0])}, (what, block)
        block = []


def test_card_text_stays_inside_its_cell_readme_export_and_report(run_dir, tmp_path):
    """Fails on main: the card's ``loss`` ends the README section early and its text lands
    after the end marker; the tables gain rows and columns; the HTML reaches the files."""
    run = resealed_copy(run_dir, tmp_path / "run", loss=HOSTILE, key="k\n" + HOSTILE)
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}\nold\n{README_END}\nafter\n")
    out = tmp_path / "out"
    result = cli("bench", "--models", run, "--detectors", "msp", "--out", out,
                 "--update-readme", readme)
    assert result.returncode == 0, result.stderr[-3000:]
    text = readme.read_text()
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    head, _, tail = text.partition(README_START)
    inside, _, after = tail.partition(README_END)
    assert head == "before\n" and after == "\nafter\n"
    assert "INJECTED" in inside  # shown, as text, inside the section
    _assert_escaped(text, "README")
    _assert_tables_intact(text, "README")

    result = cli("export", out, "--format", "md", "rst")
    assert result.returncode == 0, result.stderr[-3000:]
    md = (out / "export" / "results_table.md").read_text()
    _assert_escaped(md, "results_table.md")
    _assert_tables_intact(md, "results_table.md")
    records = parse_markdown(md)  # the tag comments and the cells read back unchanged
    assert records and {r["loss"] for r in records} == {HOSTILE}
    rst = (out / "export" / "results_table.rst").read_text()
    assert "\n# INJECTED" not in rst and "\n<!-- open" not in rst

    result = cli("report", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (out / "report" / "report.md").read_text()
    _assert_escaped(report, "report.md")
    _assert_tables_intact(report, "report.md")
    tables = parse_report_tables(report)
    assert any(HOSTILE.replace("\n", " ") in " ".join(map(" ".join, t["cells"]))
               for t in tables)

    # the Hugging Face card's README (the key given: the card's loss is no plain name)
    result = cli("export", "--model", run, "--hf-card", tmp_path / "hf", "--key",
                 "digits-cnn/digits/logitnorm/s0")
    assert result.returncode == 0, result.stderr[-3000:]
    card_readme = (tmp_path / "hf" / "README.md").read_text()
    body = card_readme.split("\n---\n", 1)[1]  # after the YAML front matter
    _assert_escaped(body, "hf README.md")
    assert "INJECTED" in body


def test_a_config_json_cannot_make_train_resume_allocate(run_dir, tmp_path):
    """A run folder holding only a ``config.json`` someone else wrote (no checkpoint or card
    to compare with) and ``train --resume`` on it: ``width=10**7`` asks for 3.4e7 GiB of
    weights. Fails on main: a raw ``RuntimeError`` from the allocator (or the OOM killer)."""
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    config = json.loads((run_dir / "config.json").read_text())
    config["arch_kwargs"] = {**config["arch_kwargs"], "width": 10**7}
    (run / "config.json").write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-c", LIMITED, str(int(_HEADROOM)),
                             "train", "--out", str(run), "--resume", "--quiet"],
                            capture_output=True, text=True, timeout=300)
    line = one_line_refusal(result)
    assert "needs" in line and "GiB" in line and "nothing was allocated" in line, line


def test_the_meta_check_leaves_the_seeded_initial_weights_as_they_were():
    """Building on the ``meta`` device first draws no random numbers: the trainer's seeded
    network is the one a plain constructor call gives."""
    import torch

    from logitnorm_plugin.models import DigitsCNN
    from logitnorm_plugin.registry.architectures import build_arch_within

    kwargs = {"num_classes": 10, "width": 32, "in_channels": 1}
    torch.manual_seed(3)
    plain = DigitsCNN(**kwargs).state_dict()
    torch.manual_seed(3)
    checked = build_arch_within("logitnorm_plugin.models.DigitsCNN", kwargs, 2**30).state_dict()
    assert plain.keys() == checked.keys()
    assert all(torch.equal(plain[k], checked[k]) for k in plain)
