"""Entry-point registry, exercised with real distributions written to disk (no mocks of the
lookup): a third-party package, a broken one and a duplicate declaration."""

import contextlib
import subprocess
import sys
import textwrap
from importlib import metadata

import pytest
import torch

import logitnorm_plugin
from logitnorm_plugin._core.errors import UnknownNameError
from logitnorm_plugin.registry import entry_points as registry
from logitnorm_plugin.registry import listing
from logitnorm_plugin.registry.entry_points import (
    AmbiguousNameError,
    EntryPointKindError,
    RegistryLoadError,
    RegistryWarning,
    UnknownDistributionError,
)

THIRD_PARTY_MODULE = '''
import torch
from pytorch_ood.api import DetectorInfo, LogitsDetector, LossInfo, Paper, Representation, Task

PAPER = Paper(title="A Third-Party Method", venue="arXiv", year=2026, url="https://example.org")


class MarginDetector(LogitsDetector):
    info = DetectorInfo(paper=PAPER, tasks={Task.CLASSIFICATION})

    def __init__(self, model, k=2):
        super().__init__()
        self.model, self.k = model, k

    def predict_logits(self, logits):
        top = logits.topk(self.k, dim=1).values
        return -(top[:, 0] - top[:, 1])


class HalfCrossEntropyLoss(torch.nn.Module):
    info = LossInfo(paper=PAPER, tasks={Task.CLASSIFICATION},
                    inputs={Representation.LOGITS}, supervised=False)

    def __init__(self, weight=0.5):
        super().__init__()
        self.weight = weight

    def forward(self, logits, target):
        return self.weight * torch.nn.functional.cross_entropy(logits, target)
'''


def write_distribution(root, name, version, entry_points, module_name=None, module_source=None,
                       name_in_metadata=True):
    """Write ``<name>-<version>.dist-info`` (METADATA + entry_points.txt) and optionally a
    module into ``root``, which the caller puts on ``sys.path``. ``name_in_metadata=False``
    leaves the ``Name`` field out of METADATA, as a damaged install does."""
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    name_line = f"Name: {name}\n" if name_in_metadata else ""
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\n{name_line}Version: {version}\n"
    )
    lines = []
    for group, items in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in items.items()]
        lines.append("")
    (dist_info / "entry_points.txt").write_text("\n".join(lines))
    if module_name:
        (root / f"{module_name}.py").write_text(textwrap.dedent(module_source))


@contextlib.contextmanager
def installed_plugin(root, name, version, entry_points, module_name, module_source):
    """:func:`write_distribution` into ``root`` (already on ``sys.path``) and refresh the
    registry; the plugin's module is forgotten afterwards, so no other test sees it."""
    write_distribution(root, name, version, entry_points, module_name, module_source)
    registry.refresh()
    try:
        yield
    finally:
        sys.modules.pop(module_name, None)


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """A well-behaved plugin package, installed on sys.path."""
    write_distribution(
        tmp_path, "margin-ood", "1.2.0",
        {
            "pytorch_ood.detectors": {"margin": "margin_ood:MarginDetector"},
            "pytorch_ood.losses": {"half_ce": "margin_ood:HalfCrossEntropyLoss"},
        },
        "margin_ood", THIRD_PARTY_MODULE,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "margin_ood", raising=False)
    registry.refresh()
    yield tmp_path
    sys.modules.pop("margin_ood", None)


def test_builtin_names_are_declared_by_this_distribution():
    assert {"logitnorm", "cross_entropy"} <= set(logitnorm_plugin.list_losses())
    assert {"logitnorm", "msp", "odin", "energy", "maxlogit", "entropy"} <= set(
        logitnorm_plugin.list_detectors()
    )
    assert {"digits", "cifar10", "cifar100"} <= set(logitnorm_plugin.list_benchmarks())
    entry = registry.get_entry("detector", "msp")
    assert entry.distribution == "logitnorm-plugin"
    assert entry.version == metadata.version("logitnorm-plugin")


def test_registry_equals_what_pyproject_declares():
    eps = metadata.distribution("logitnorm-plugin").entry_points
    for kind, group in registry.GROUPS.items():
        declared = sorted(ep.name for ep in eps if ep.group == group)
        assert registry._list(kind, None, False) == declared


def test_names_are_case_insensitive_and_dashes_equal_underscores():
    assert logitnorm_plugin.get_loss_class("Cross-Entropy") is logitnorm_plugin.get_loss_class(
        "cross_entropy"
    )
    assert logitnorm_plugin.get_detector_class(" MSP ").__name__ == "MaxSoftmax"


def test_a_class_is_accepted_wherever_a_name_is():
    from pytorch_ood.detector import EnergyBased

    assert logitnorm_plugin.get_detector_class(EnergyBased) is EnergyBased
    model = torch.nn.Linear(3, 2)
    assert isinstance(logitnorm_plugin.create_detector(EnergyBased, model), EnergyBased)
    assert logitnorm_plugin.create_loss(logitnorm_plugin.LogitNormLoss, t=0.5).t == 0.5


def test_unknown_name_lists_names_and_closest_match():
    with pytest.raises(UnknownNameError) as info:
        logitnorm_plugin.create_detector("maxlogits", None)
    message = str(info.value)
    assert "Did you mean 'maxlogit'?" in message
    for name in ("msp", "odin", "energy", "logitnorm"):
        assert name in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="Did you mean 'logitnorm'"):
        logitnorm_plugin.create_loss("logit_norm")


def test_wildcard_filter():
    assert logitnorm_plugin.list_detectors("m*") == [
        "mahalanobis", "mahalanobis_odin", "maxlogit", "mc_dropout", "msp"
    ]
    assert logitnorm_plugin.list_losses("*ENTROP*") == ["cross_entropy", "entropic_open_set"]


def test_third_party_distribution_is_found_and_built(third_party):
    assert "margin" in logitnorm_plugin.list_detectors()
    assert "half_ce" in logitnorm_plugin.list_losses()
    entry = registry.get_entry("detector", "margin")
    assert (entry.distribution, entry.version) == ("margin-ood", "1.2.0")
    detector = logitnorm_plugin.create_detector("margin", torch.nn.Linear(4, 3), k=2)
    scores = detector(torch.randn(5, 4))
    assert scores.shape == (5,) and torch.isfinite(scores).all()
    loss = logitnorm_plugin.create_loss("half_ce", weight=0.25)
    value = loss(torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 0]))
    assert value.requires_grad and torch.isfinite(value)


def test_broken_distribution_warns_and_is_skipped(third_party):
    write_distribution(
        third_party, "broken-ood", "0.1",
        {"pytorch_ood.detectors": {"broken": "broken_ood_missing_module:Nothing",
                                   "malformed": "not a valid value"}},
    )
    # malformed values are skipped when the index is built, naming the distribution
    registry.refresh()
    with pytest.warns(RegistryWarning, match="broken-ood"):
        names = logitnorm_plugin.list_detectors()
    assert "malformed" not in names
    # an entry whose import fails: skipped with a warning when verified, others still work
    with pytest.warns(RegistryWarning, match=r"'broken' from distribution 'broken-ood'"):
        verified = logitnorm_plugin.list_detectors(verify=True)
    assert "broken" not in verified and {"margin", "msp", "logitnorm"} <= set(verified)
    with pytest.warns(RegistryWarning, match="broken-ood"):
        rows = listing.describe("detector")
    assert "margin" in [r["name"] for r in rows] and "broken" not in [r["name"] for r in rows]
    # asking for it by name is an error that says why
    with pytest.raises(RegistryLoadError, match="ModuleNotFoundError"):
        logitnorm_plugin.get_detector_class("broken")


def test_duplicate_names_are_reported_with_both_distributions(tmp_path, monkeypatch):
    write_distribution(
        tmp_path, "other-msp", "3.0",
        {"pytorch_ood.detectors": {"msp": "pytorch_ood.detector:MaxLogit"}},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    with pytest.warns(RegistryWarning, match="logitnorm-plugin.*other-msp|other-msp.*logitnorm"):
        assert logitnorm_plugin.list_detectors("msp") == ["msp"]
    with pytest.raises(AmbiguousNameError, match="other-msp") as info:
        logitnorm_plugin.get_detector_class("msp")
    assert "logitnorm-plugin" in str(info.value)
    # a qualified name selects one
    assert logitnorm_plugin.get_detector_class("other-msp:msp").__name__ == "MaxLogit"
    assert logitnorm_plugin.get_detector_class("logitnorm-plugin:msp").__name__ == "MaxSoftmax"


def test_third_party_autoload_can_be_switched_off(third_party, monkeypatch):
    monkeypatch.setenv(registry.NO_THIRD_PARTY_ENV, "1")
    registry.refresh()
    assert "margin" not in logitnorm_plugin.list_detectors()
    assert "msp" in logitnorm_plugin.list_detectors()


def test_build_index_takes_entry_points_directly():
    eps = [
        metadata.EntryPoint(name="Fancy-Score", value="pkg.mod:Fancy", group="g"),
        metadata.EntryPoint(name="x", value="pkg.mod", group="g"),
    ]
    with pytest.warns(RegistryWarning, match="x = pkg.mod"):
        index = registry.build_index("detector", eps)
    assert list(index.by_name) == ["fancy_score"]
    assert index.by_name["fancy_score"][0].value == "pkg.mod:Fancy"


def test_listing_imports_nothing_heavy():
    code = (
        "import sys, logitnorm_plugin as lp; lp.list_detectors(); lp.list_losses(); "
        "lp.list_benchmarks(); lp.registry.entry_points.get_entry('detector', 'msp'); "
        "heavy = [m for m in ('torch', 'pytorch_ood', 'torchvision') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_name_of_a_class_is_its_registered_name():
    from pytorch_ood.detector import MaxSoftmax

    assert registry.name_of("detector", MaxSoftmax) == "msp"
    assert registry.name_of("detector", logitnorm_plugin.LogitNormDetector) == "logitnorm"
    assert registry.name_of("loss", logitnorm_plugin.LogitNormLoss) == "logitnorm"
    unregistered = type("Unregistered", (), {})
    assert registry.name_of("detector", unregistered) == "Unregistered"


# -- plugins that must not break everything (issue 10) ---------------------------------------


def _list_detectors_cli(capsys):
    """``logitnorm-ood list detectors`` in this process: (exit status, listed names)."""
    from logitnorm_plugin import cli

    status = cli.main(["list", "detectors"])
    lines = capsys.readouterr().out.splitlines()
    return status, [line.split()[0] for line in lines[2:] if line.strip()]


def test_distribution_without_a_name_is_skipped_with_a_warning_naming_its_folder(
    third_party, capsys
):
    write_distribution(
        third_party, "nameless-ood", "0.3",
        {"pytorch_ood.detectors": {"nameless": "margin_ood:MarginDetector"}},
        name_in_metadata=False,
    )
    folder = str(third_party / "nameless_ood-0.3.dist-info")
    registry.refresh()
    with pytest.warns(RegistryWarning, match="no 'Name'") as caught:
        names = logitnorm_plugin.list_detectors()
    assert folder in str(caught[0].message) and "nameless" in str(caught[0].message)
    assert "nameless" not in names and {"margin", "msp"} <= set(names)
    registry.refresh()
    with pytest.warns(RegistryWarning, match="no 'Name'"):
        detector = logitnorm_plugin.create_detector("msp", torch.nn.Linear(4, 3))
    assert detector.__class__.__name__ == "MaxSoftmax"
    registry.refresh()
    with pytest.warns(RegistryWarning, match="no 'Name'"):
        status, listed = _list_detectors_cli(capsys)
    assert status == 0 and "msp" in listed and "nameless" not in listed
    # the switch that keeps third-party names out reads the same metadata
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(registry.NO_THIRD_PARTY_ENV, "1")
        registry.refresh()
        assert "msp" in logitnorm_plugin.list_detectors()


def test_plugin_calling_sys_exit_at_import_is_skipped_and_named(third_party, capsys):
    with installed_plugin(
        third_party, "exiting-ood", "1.0",
        {"pytorch_ood.detectors": {"exiting": "exiting_ood:Detector"}},
        "exiting_ood", "import sys\nsys.exit(3)\n",
    ):
        with pytest.warns(RegistryWarning, match=r"'exiting' from distribution 'exiting-ood'"):
            status, listed = _list_detectors_cli(capsys)
        assert status == 0 and {"margin", "msp"} <= set(listed) and "exiting" not in listed
        with pytest.raises(RegistryLoadError, match=r"exiting-ood.*SystemExit: 3"):
            logitnorm_plugin.get_detector_class("exiting")


def test_keyboard_interrupt_while_importing_a_plugin_is_not_swallowed(third_party):
    with installed_plugin(
        third_party, "ctrl-c-ood", "1.0",
        {"pytorch_ood.detectors": {"ctrl_c": "ctrl_c_ood:Detector"}},
        "ctrl_c_ood", "raise KeyboardInterrupt\n",
    ):
        with pytest.raises(KeyboardInterrupt):
            logitnorm_plugin.get_detector_class("ctrl_c")


WRONG_KINDS_MODULE = """
import torch
from pytorch_ood.api import DetectorInfo, Paper, Task


def score(model, **kwargs):
    return model


class NotADetector:
    def __init__(self, model):
        self.model = model


def loss_function(logits, target):
    return torch.nn.functional.cross_entropy(logits, target)


class NotABenchmark:
    pass


INSTANCE = NotABenchmark()
"""


@pytest.mark.parametrize(
    "kind, name, value, what, expected",
    [
        ("detector", "scorer", "wrong_kinds:score", "the function wrong_kinds.score",
         "pytorch_ood.api.Detector"),
        ("detector", "plain", "wrong_kinds:NotADetector", "the class wrong_kinds.NotADetector",
         "pytorch_ood.api.Detector"),
        ("loss", "loss_fn", "wrong_kinds:loss_function", "the function wrong_kinds.loss_function",
         "loss(logits, target)"),
        ("loss", "not_callable", "wrong_kinds:NotABenchmark",
         "the class wrong_kinds.NotABenchmark", "torch.nn.Module"),
        ("benchmark", "plain_bench", "wrong_kinds:NotABenchmark",
         "the class wrong_kinds.NotABenchmark", "pytorch_ood.benchmark.Benchmark"),
        ("benchmark", "instance", "wrong_kinds:INSTANCE", "a NotABenchmark object",
         "pytorch_ood.benchmark.Benchmark"),
    ],
)
def test_entry_point_of_the_wrong_kind_is_refused_when_loaded(
    third_party, kind, name, value, what, expected
):
    with installed_plugin(
        third_party, "wrong-kinds", "0.2", {registry.GROUPS[kind]: {name: value}},
        "wrong_kinds", WRONG_KINDS_MODULE,
    ):
        with pytest.raises(EntryPointKindError) as info:
            registry._get_class(kind, name)
        message = str(info.value)
        assert "\n" not in message
        for part in (f"{kind} '{name}'", "'wrong-kinds'", value, what, expected):
            assert part in message, (part, message)
        assert isinstance(info.value, RegistryLoadError) and isinstance(info.value, TypeError)
        # listing with verification skips it, naming it; the others still load
        with pytest.warns(RegistryWarning, match=f"'{name}' from distribution 'wrong-kinds'"):
            verified = registry._list(kind, None, True)
        assert name not in verified and verified


def test_wrong_kind_detector_in_the_engine_is_a_one_line_user_error(third_party):
    from logitnorm_plugin._core.errors import UserError
    from logitnorm_plugin.evaluation.specs import parse_detectors

    with installed_plugin(
        third_party, "wrong-kinds", "0.2",
        {"pytorch_ood.detectors": {"scorer": "wrong_kinds:score"}},
        "wrong_kinds", WRONG_KINDS_MODULE,
    ):
        with pytest.raises(UserError, match="must name a subclass of pytorch_ood.api.Detector"):
            parse_detectors(["msp", "scorer"])
        with pytest.raises(EntryPointKindError):
            logitnorm_plugin.create_detector("scorer", torch.nn.Linear(4, 3))


def test_every_registered_name_passes_the_kind_check():
    for kind in registry.GROUPS:
        for entry in registry.entries(kind):
            registry.KIND_RULES[kind][0](entry.load())


def test_qualified_name_with_an_unknown_distribution_lists_the_declaring_ones(tmp_path,
                                                                              monkeypatch):
    with pytest.raises(UnknownDistributionError) as info:
        logitnorm_plugin.get_detector_class("foo:logitnorm")
    message = str(info.value)
    assert "No distribution 'foo' declares the detector 'logitnorm'" in message
    assert "logitnorm-plugin" in message and "Did you mean 'logitnorm'" not in message
    assert isinstance(info.value, UnknownNameError) and isinstance(info.value, ValueError)
    # with two declaring distributions: both listed, and the closest one suggested
    write_distribution(
        tmp_path, "other-msp", "3.0",
        {"pytorch_ood.detectors": {"msp": "pytorch_ood.detector:MaxLogit"}},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    with pytest.warns(RegistryWarning, match="several distributions"):
        with pytest.raises(UnknownDistributionError) as info:
            logitnorm_plugin.get_detector_class("other-mps:msp")
    message = str(info.value)
    assert "Did you mean 'other-msp:msp'?" in message
    assert "logitnorm-plugin, other-msp" in message
    # an unknown name stays an unknown name, whatever the distribution
    with pytest.raises(UnknownNameError, match="Did you mean 'maxlogit'"):
        logitnorm_plugin.get_detector_class("foo:maxlogits")
