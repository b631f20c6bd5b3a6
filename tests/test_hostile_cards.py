"""Issue 22, point 4 and the bad card values of point 11: model cards changed and resealed
the way an attacker does (the seal recomputed with the package's own ``json_sha256``), used by
the real commands in a fresh process.

- ``arch_kwargs`` that would allocate gigabytes (``width=9000``) are refused before any memory
  is allocated (the network is built on the ``meta`` device and compared with the weights'
  shapes); ``width=-1`` and ``width=1e9`` are one line; ``export --model`` exports only what
  loads;
- ``t="abc"``, ``std`` 0 and friends: one line, exit status 2.
"""

import json

import pytest
from hostile import cli, one_line_refusal, resealed_copy


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from logitnorm_plugin.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "digits-logitnorm-s0"
    train(dataset="digits", loss="logitnorm", epochs=1, batch_size=256, seed=0, out=out,
          progress=False, device="cpu")
    return out


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
