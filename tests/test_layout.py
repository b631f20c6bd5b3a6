"""The shape of the package: floors without cycles, argparse only in the command line, a small
public surface that loads no torch."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import logitnorm_plugin

PACKAGE = Path(logitnorm_plugin.__file__).resolve().parent

ROOT = Path(__file__).resolve().parent.parent
CONTRIBUTING = ROOT / "CONTRIBUTING.md"


def _layers() -> dict:
    """layer name -> its row in CONTRIBUTING.md's table (lowest first)."""
    text = CONTRIBUTING.read_text(encoding="utf-8")
    table = text.split("<!-- layers:", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `([a-z_]+)/?` \|", table, flags=re.M)
    assert rows, "no layer table in CONTRIBUTING.md"
    assert [int(n) for n, _ in rows] == list(range(len(rows))), "rows must be numbered 0, 1, ..."
    return {name: int(n) for n, name in rows}


LAYERS = _layers()


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _top(name: str) -> str:
    return name.split(".")[0]


def _imports(module: str, path: Path):
    """Package modules imported by ``module``, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("logitnorm_plugin."):
                    yield alias.name[len("logitnorm_plugin."):]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("logitnorm_plugin"):
                target = node.module[len("logitnorm_plugin"):].lstrip(".")
            else:
                continue
            if target:
                yield target
            else:  # from logitnorm_plugin import runs, store
                yield from (alias.name for alias in node.names)
            if node.module == "logitnorm_plugin" or (node.level and not node.module):
                continue
            for alias in node.names:  # from logitnorm_plugin.data import digits (a module)
                candidate = f"{target}.{alias.name}" if target else alias.name
                if (PACKAGE / Path(*candidate.split("."))).with_suffix(".py").is_file():
                    yield candidate


def test_every_layer_is_in_the_table_and_every_row_exists():
    on_disk = {_top(module) for module, _ in _modules() if module}
    assert on_disk == set(LAYERS), (
        f"CONTRIBUTING.md's layer table and the package differ: only on disk "
        f"{sorted(on_disk - set(LAYERS))}, only in the table {sorted(set(LAYERS) - on_disk)}"
    )


@pytest.mark.parametrize("module, path", list(_modules()), ids=lambda x: str(x))
def test_module_imports_only_from_earlier_layers(module, path):
    if not module:
        return  # the package's __init__: lazy attribute table only
    layer = LAYERS[_top(module)]
    for target in _imports(module, path):
        if not target or _top(target) == _top(module):
            continue
        assert _top(target) in LAYERS, f"{module} imports unknown {target}"
        assert LAYERS[_top(target)] < layer, (
            f"{module} (layer {layer}, {_top(module)}) imports {target} "
            f"(layer {LAYERS[_top(target)]}, {_top(target)}): a layer imports only from "
            "earlier rows of CONTRIBUTING.md's table"
        )


def test_no_import_cycle_between_modules():
    graph = {}
    for module, path in _modules():
        if module:
            graph[module] = {t for t in _imports(module, path)
                             if t and t != module and t in dict(_modules())}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


def test_argparse_only_in_the_command_line():
    users = [module for module, path in _modules()
             if "argparse" in path.read_text(encoding="utf-8") and _top(module or "x") != "cli"]
    assert users == []


def test_modules_stay_short():
    long = {module: n for module, path in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 600}
    assert long == {}


def test_public_surface_is_lazy_and_complete():
    code = (
        "import sys, logitnorm_plugin as lp\n"
        "assert 'torch' not in sys.modules\n"
        "from logitnorm_plugin._core.errors import UserError\n"
        "assert lp.UserError is UserError\n"
        "print(sorted(lp.__all__))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    names = set(ast.literal_eval(done.stdout.strip()))
    assert {"train", "evaluate", "tune_t", "load_trained", "TrainConfig", "ModelSpec",
            "ResultStore", "Recipe", "UserError", "LogitNormLoss", "LogitNormDetector",
            "create_detector", "create_loss"} <= names
    from logitnorm_plugin.evaluation import engine as evaluation
    from logitnorm_plugin.evaluation import specs
    from logitnorm_plugin.store import results as store
    from logitnorm_plugin.training import config as train_config
    from logitnorm_plugin.training import loop as training
    from logitnorm_plugin.training import recipes

    assert logitnorm_plugin.train is training.train
    assert logitnorm_plugin.evaluate is evaluation.evaluate
    assert logitnorm_plugin.TrainConfig is train_config.TrainConfig
    assert logitnorm_plugin.ModelSpec is specs.ModelSpec
    assert logitnorm_plugin.ResultStore is store.ResultStore
    assert logitnorm_plugin.Recipe is recipes.Recipe


def test_no_print_to_stderr_outside_the_command_line():
    """Diagnostics go through ``logging`` (the command line prints them as one line each),
    progress through tqdm; stdout is for results."""
    found = []
    for module, path in _modules():
        if _top(module or "x") == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
                    and any(k.arg == "file" and "stderr" in ast.unparse(k.value)
                            for k in node.keywords)):
                found.append(f"{module}:{node.lineno}")
    assert found == []


def test_test_files_do_not_import_each_other():
    """CONTRIBUTING: shared test helpers are plain modules in ``tests/``; a test file that
    imports another one runs (and collects) that file's module-level code twice."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("test_")]
    assert offenders == []
