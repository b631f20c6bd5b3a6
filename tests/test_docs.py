"""Every ``python`` code block of README.md, CONTRIBUTING.md and docs/*.md runs as written, on
the CPU, offline, with the bundled digits (issue 21, point 7). A block fenced as
```` ```python no-run ```` is documentation only (it needs a GPU or downloads); CONTRIBUTING.md
says so. The plugin example of CONTRIBUTING.md is also installed as a real distribution with the
entry points of its ``toml`` block and trained through the command its ``bash`` block shows."""

import re
import sys
from pathlib import Path

import pytest

from logitnorm_plugin.cli import main
from logitnorm_plugin.registry import entry_points as registry
from logitnorm_plugin.registry.entry_points import EntryPointKindError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "CONTRIBUTING.md",
        *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")))
FENCE = re.compile(r"^(\s*)```(.*)$")


def blocks(name):
    """``(line, info, code)`` of every fenced block of a Markdown file."""
    out, lines = [], (ROOT / name).read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        i += 1
        if not match or not match.group(2).strip():
            continue
        indent, info, start, body = len(match.group(1)), match.group(2).strip(), i, []
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i][indent:])
            i += 1
        i += 1
        out.append((start, info, "\n".join(body) + "\n"))
    return out


PYTHON = [(name, line, code) for name in DOCS for line, info, code in blocks(name)
          if info.split()[0] == "python" and "no-run" not in info.split()[1:]]


def test_the_docs_have_python_blocks_and_no_run_is_rare():
    infos = [info for name in DOCS for _, info, _ in blocks(name)]
    assert len(PYTHON) >= 3
    assert sum("no-run" in i for i in infos) <= 1  # a GPU or a download only


@pytest.mark.parametrize("name,line,code", PYTHON, ids=[f"{n}:{ln}" for n, ln, _ in PYTHON])
def test_python_block_runs(name, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOGITNORM_PLUGIN_NO_THIRD_PARTY", "1")
    registry.refresh()
    exec(compile(code, f"{name}:{line}", "exec"), {"__name__": f"doc_{line}"})


def _plugin_block():
    (code,) = [c for n, _, c in PYTHON if n == "CONTRIBUTING.md" and "class MyLoss" in c]
    return code


def _entry_points():
    (toml,) = [c for _, info, c in blocks("CONTRIBUTING.md") if info == "toml"]
    groups, current = {}, None
    for text in toml.splitlines():
        if text.startswith("["):
            current = text.split('"')[1]
        elif "=" in text:
            key, _, value = text.partition("=")
            groups.setdefault(current, {})[key.strip()] = value.strip().strip('"')
    return groups


def _install(root, module_source, entry_points):
    """``my_package`` with the block as its ``loss`` and ``detector`` modules, declared with the
    documented entry points (the example has no benchmark class: that entry is left out)."""
    package = root / "my_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module in ("loss", "detector"):
        (package / f"{module}.py").write_text(module_source)
    dist = root / "my_package-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    lines = []
    for group, items in entry_points.items():
        items = {k: v for k, v in items.items() if not v.endswith(":MyBenchmark")}
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in items.items()), ""]
    (dist / "entry_points.txt").write_text("\n".join(lines))


@pytest.fixture
def my_package(tmp_path, monkeypatch):
    _install(tmp_path, _plugin_block(), _entry_points())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    registry.refresh()
    yield tmp_path
    for module in ("my_package", "my_package.loss", "my_package.detector"):
        sys.modules.pop(module, None)
    registry.refresh()


def test_the_plugin_example_trains_as_the_docs_say(my_package, capsys):
    """``logitnorm-ood train --loss my_loss --loss-arg margin=0.5`` (one epoch) trains with the
    example's loss, and ``create_loss("my_loss", margin=0.5)`` builds it."""
    bash = [c for _, info, c in blocks("CONTRIBUTING.md") if info == "bash"
            and "--loss my_loss" in c]
    (command,) = [ln.split("#")[0].split() for ln in bash[0].splitlines()
                  if "--loss my_loss" in ln]
    assert command[:2] == ["logitnorm-ood", "train"]
    assert main([*command[1:], "--epochs", "1", "--quiet", "--out", "run"]) == 0
    assert "digits-cnn/digits/my_loss/s0" in capsys.readouterr().out
    assert registry.create_loss("my_loss", margin=0.5).margin == 0.5
    assert "my_detector" in registry.list_detectors()


def test_a_loss_without_forward_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    source = _plugin_block()
    broken = re.sub(r"\n    def forward\(self.*?(?=\n```|\Z)", "\n", source, flags=re.S)
    assert "def forward" not in broken and "class MyLoss" in broken
    _install(tmp_path, broken, _entry_points())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    registry.refresh()
    try:
        with pytest.raises(EntryPointKindError, match="forward"):
            registry.get_loss_class("my_loss")
        assert main(["train", "--loss", "my_loss", "--epochs", "1", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "my_loss" in err and "forward" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    finally:
        for module in ("my_package", "my_package.loss", "my_package.detector"):
            sys.modules.pop(module, None)
        registry.refresh()


def _commands():
    """Every ``logitnorm-ood ...`` line of the docs' ``bash`` blocks (continuations joined,
    comments dropped), except lines with a ``...`` placeholder."""
    import shlex

    out = []
    for name in DOCS:
        for line, info, code in blocks(name):
            if info.split()[0] != "bash":
                continue
            text = code.replace("\\\n", " ")
            pieces = [p for ln in text.splitlines()
                      for p in re.split(r"&&|;", ln.split(" #")[0])]
            for command in (p.strip() for p in pieces):
                if command.startswith("logitnorm-ood ") and "..." not in command:
                    words = shlex.split(command)
                    out.append((f"{name}:{line}", [w if not w.startswith("$") else "0"
                                                   for w in words[1:]]))
    return out


COMMANDS = _commands()


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS])
def test_documented_command_lines_parse(where, argv):
    """The options of every documented command exist and take the values shown (parsed only,
    nothing runs: the commands train on CIFAR or need a GPU)."""
    import argparse
    import importlib

    from logitnorm_plugin.cli import COMMANDS as MODULES

    assert argv and argv[0] in MODULES, (where, argv)
    module = importlib.import_module(f"logitnorm_plugin.cli.{MODULES[argv[0]]}")
    parser = argparse.ArgumentParser(prog=f"logitnorm-ood {argv[0]}", exit_on_error=False)
    module.add_arguments(parser)
    try:
        parser.parse_args(argv[1:])
    except (argparse.ArgumentError, SystemExit) as exc:
        raise AssertionError(f"{where}: logitnorm-ood {' '.join(argv)}: {exc}") from exc
