"""The shape of the package: floors without cycles, argparse only in the command line, a small
public surface that loads no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import logitnorm_plugin

PACKAGE = Path(logitnorm_plugin.__file__).resolve().parent

#: module -> floor; a module may import only from its own floor or below (CONTRIBUTING.md)
FLOORS = {
    "conventions": 0, "errors": 0, "tables": 0,
    "loss": 1, "detector": 1, "metrics": 1, "atomic": 1, "provenance": 1, "device": 1,
    "augment": 1, "distributed": 1, "rng": 1, "train_step": 1, "split": 1, "outliers": 1,
    "locks": 1, "digests": 1, "store_db": 1, "aggregation": 1, "hub": 1, "checkpoints": 2,
    "registry": 2, "store": 2, "runs": 2, "models": 2, "data": 2, "benchmarks": 2,
    "recipes": 2, "published": 2, "plots": 2, "train_config": 2, "t_selection": 2, "specs": 2,
    "model_labels": 2, "feeds": 2, "fit_cache": 2, "protocol": 2,
    "training": 3, "evaluation": 3,
    "bench_output": 2,
    "tuning": 4, "bench": 4, "export": 4, "upstream": 4, "report": 4, "report_figures": 4,
    "workflows": 4,
    "cli": 5,
}


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


@pytest.mark.parametrize("module, path", list(_modules()), ids=lambda x: str(x))
def test_module_imports_only_from_its_floor_or_below(module, path):
    if not module:
        return  # the package's __init__: lazy attribute table only
    assert _top(module) in FLOORS, f"{module} has no floor: add it to FLOORS and CONTRIBUTING.md"
    floor = FLOORS[_top(module)]
    for target in _imports(module, path):
        if not target:
            continue
        assert _top(target) in FLOORS, f"{module} imports unknown {target}"
        assert FLOORS[_top(target)] <= floor, (
            f"{module} (floor {floor}) imports {target} (floor {FLOORS[_top(target)]})"
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
        "from logitnorm_plugin.errors import UserError\n"
        "assert lp.UserError is UserError\n"
        "print(sorted(lp.__all__))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    names = set(ast.literal_eval(done.stdout.strip()))
    assert {"train", "evaluate", "tune_t", "load_trained", "TrainConfig", "ModelSpec",
            "ResultStore", "Recipe", "UserError", "LogitNormLoss", "LogitNormDetector",
            "create_detector", "create_loss"} <= names
    from logitnorm_plugin import evaluation, recipes, specs, store, train_config, training

    assert logitnorm_plugin.train is training.train
    assert logitnorm_plugin.evaluate is evaluation.evaluate
    assert logitnorm_plugin.TrainConfig is train_config.TrainConfig
    assert logitnorm_plugin.ModelSpec is specs.ModelSpec
    assert logitnorm_plugin.ResultStore is store.ResultStore
    assert logitnorm_plugin.Recipe is recipes.Recipe
