"""``logitnorm-ood upstream-patch``: a ``git format-patch`` series that adds the LogitNorm
detector, its tests and docs page to pytorch-ood, applied to the pytorch-ood source
distribution; the new tests and the distribution's own collectable tests run green there, and
the ``info`` contract holds on the patched package."""

import ast
import shutil
import subprocess
import textwrap

import pytest
import upstream_sdist

from logitnorm_plugin.cli import main
from logitnorm_plugin.reporting import upstream_patch

# the source distribution's tests/test_info.py and test_hpo.py import tests/detectors/ and
# tests/helpers, which it does not ship: everything else collects
UNCOLLECTABLE = ("tests/test_info.py", "tests/test_hpo.py")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    upstream_sdist.sdist_archive()  # skip (fail under CI) without it
    out = tmp_path_factory.mktemp("series")
    assert main(["upstream-patch", "--out", str(out)]) == 0
    return sorted(out.glob("*.patch"))


def test_series_is_three_git_patches(series):
    assert [p.name[:5] for p in series] == ["0001-", "0002-", "0003-"]
    texts = [p.read_text() for p in series]
    assert all(t.startswith("From ") and "\nSubject: [PATCH " in t for t in texts)
    assert "src/pytorch_ood/detector/logitnorm.py" in texts[0]
    assert "tests/detectors/test_logitnorm.py" in texts[1] and "tests/test_info.py" in texts[1]
    # the source distribution has no smoke test: the commit message says it was not changed
    assert "not changed: tests/detectors/test_all_detectors_smoke.py" in texts[1]
    assert "docs/detector/logitnorm.rst" in texts[2]


def test_series_applies_and_the_tests_are_green(series, tmp_path):
    root = upstream_sdist.unpack_sdist(tmp_path / "src")
    check = subprocess.run(["git", "apply", "--check", *map(str, series)], cwd=root,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    for patch in series:
        upstream_sdist.apply_patch(root, patch)
    ignore = [f"--ignore={path}" for path in UNCOLLECTABLE]
    done = upstream_sdist.run_in_source(
        root, ["-m", "pytest", "tests", "-q", "-rA", "-p", "no:cacheprovider", *ignore],
        tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = [line for line in done.stdout.splitlines() if line.startswith("PASSED")]
    new = [line for line in passed if "tests/detectors/test_logitnorm.py" in line]
    assert len(new) == 6, new
    assert len(passed) > 50  # the distribution's own tests ran too


def test_info_contract_on_the_patched_package(series, tmp_path):
    root = upstream_sdist.unpack_sdist(tmp_path / "src")
    for patch in series:
        upstream_sdist.apply_patch(root, patch)
    script = textwrap.dedent('''
        import ast, inspect, torch
        from pytorch_ood import detector
        from pytorch_ood.api import Detector, DetectorInfo, LogitsDetector, Task
        assert detector.__file__.startswith("src/") or "/src/" in detector.__file__
        cls = detector.LogitNormDetector
        # exported from pytorch_ood.detector, as tests/test_info.py collects detectors
        exported = {o for o in vars(detector).values() if inspect.isclass(o)
                    and issubclass(o, Detector) and not inspect.isabstract(o)
                    and not o.__name__.startswith("_")
                    and o.__module__.startswith("pytorch_ood.detector")}
        assert cls in exported and issubclass(cls, LogitsDetector)
        # its own info record, with the paper and the tasks it claims
        assert "info" in vars(cls) and isinstance(cls.info, DetectorInfo)
        assert cls.info.tasks == {Task.CLASSIFICATION, Task.SEGMENTATION}
        assert cls.info.paper.year == 2022 and "2205.09310" in cls.info.paper.url
        import pytorch_ood.detector.logitnorm as functional
        torch.testing.assert_close(functional.logitnorm_score(torch.eye(3), 2.0),
                                   cls(None, t=2.0).predict_logits(torch.eye(3)))
        # listed where the contract lists segmentation detectors
        tree = ast.parse(open("tests/test_info.py").read())
        builders = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                        and getattr(n.targets[0], "id", "") == "SEGMENTATION_DETECTORS")
        keys = [k.attr for k in builders.keys]
        assert "LogitNormDetector" in keys, keys
        assert keys.index("LogitNormDetector") < keys.index("MaxLogit")
        # the segmentation claim holds: every pixel is scored like a sample
        logits = torch.randn(2, 3, 4, 4)
        d = cls(model=None, t=0.5)
        per_pixel = d.predict_logits(logits)
        as_samples = d.predict_logits(logits.permute(0, 2, 3, 1).reshape(-1, 3))
        torch.testing.assert_close(per_pixel, as_samples.reshape(2, 4, 4))
        # the docstring holds the paper and the formula
        assert "Logit Normalization" in cls.__doc__ and "max_y" in cls.__doc__
        print("contract ok")
    ''')
    done = upstream_sdist.run_in_source(root, ["-c", script], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "contract ok" in done.stdout


def test_series_is_reproducible(series, tmp_path):
    again = upstream_patch.write_series(upstream_patch.SeriesRequest(out=tmp_path / "again"))
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in series]


# a stand-in with the two anchors the smoke test of pytorch-ood's repository has (its detector
# import block and the MSP builder line); the source distribution ships no such file
SMOKE = '''\
import unittest

from src.pytorch_ood.detector import (
    ASH,
    GEN,
    EnergyBased,
    KLMatching,
    MaxSoftmax,
    fDBD,
)


class TestAllDetectorsSmoke(unittest.TestCase):
    def _classification_detector_registry(self):
        def eval_model():
            return None

        return [
            ("MSP", lambda: MaxSoftmax(eval_model())),
            ("GEN", lambda: GEN(eval_model())),
        ]
'''


def test_a_checkout_with_the_smoke_test_gets_its_entry(tmp_path):
    root = upstream_sdist.unpack_sdist(tmp_path / "checkout")
    smoke = root / "tests" / "detectors" / "test_all_detectors_smoke.py"
    smoke.parent.mkdir(parents=True)
    smoke.write_text(SMOKE)
    pristine = tmp_path / "pristine"
    shutil.copytree(root, pristine)
    patches = upstream_patch.write_series(upstream_patch.SeriesRequest(
        out=tmp_path / "series", source=root, author="A Person <a@example.org>"))
    assert "not changed" not in patches[1].read_text()
    assert "From: A Person <a@example.org>" in patches[0].read_text()
    for patch in patches:
        upstream_sdist.apply_patch(pristine, patch)
    text = (pristine / "tests" / "detectors" / "test_all_detectors_smoke.py").read_text()
    ast.parse(text)
    lines = text.splitlines()
    assert lines.index("    LogitNormDetector,") == lines.index("    KLMatching,") + 1
    msp = lines.index('            ("MSP", lambda: MaxSoftmax(eval_model())),')
    assert lines[msp + 1] == '            ("LogitNorm", lambda: LogitNormDetector(eval_model())),'


def test_missing_source_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(upstream_patch.SDIST_ENV, str(tmp_path / "empty"))
    assert main(["upstream-patch", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip download --no-binary :all: --no-deps pytorch-ood==" in err
    assert main(["upstream-patch", "--out", str(tmp_path / "o"), "--source", str(tmp_path)]) == 2
    assert "not pytorch-ood's source" in capsys.readouterr().err
