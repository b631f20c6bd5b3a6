"""Architectures by name: build, forward shape, arch_spec round trip, errors."""

import pytest
import torch
from torch import nn

from logitnorm_plugin._core.errors import UnknownNameError
from logitnorm_plugin.registry.architectures import (
    ARCHS,
    arch_spec,
    build_model,
    list_archs,
    resolve_class,
)

# (in_channels, H, W) each architecture is tested with
INPUTS = {"wrn-40-2": (3, 32, 32), "resnet18-32x32": (3, 32, 32), "digits-cnn": (1, 8, 8)}


def test_every_arch_has_a_test_input():
    assert set(INPUTS) == set(ARCHS) == set(list_archs())


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("num_classes", [10, 7])
def test_forward_shape(arch, num_classes):
    torch.manual_seed(0)
    c, h, w = INPUTS[arch]
    model = build_model(arch, num_classes, in_channels=c).eval()
    with torch.no_grad():
        out = model(torch.randn(2, c, h, w))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_arch_spec_round_trip_loads_state_dict(arch):
    c, h, w = INPUTS[arch]
    torch.manual_seed(0)
    model = build_model(arch, 10, in_channels=c).eval()
    arch_class, arch_kwargs = arch_spec(arch, 10, in_channels=c)
    assert isinstance(arch_class, str) and "." in arch_class
    assert arch_kwargs["num_classes"] == 10 and arch_kwargs["in_channels"] == c
    rebuilt = resolve_class(arch_class)(**arch_kwargs).eval()
    assert type(rebuilt) is type(model)
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_arch_spec_matches_pytorch_ood_registry_for_wrn():
    # pytorch-ood's ModelEntry for its WRN-40-2 weights uses exactly these arguments
    from pytorch_ood.model import WideResNet

    arch_class, kwargs = arch_spec("wrn-40-2", 10)
    assert arch_class == "pytorch_ood.model.WideResNet"
    assert kwargs == dict(num_classes=10, depth=40, widen_factor=2, drop_rate=0.3, in_channels=3)
    assert isinstance(build_model("wrn-40-2", 10), WideResNet)


def test_kwargs_override_defaults():
    _, kwargs = arch_spec("digits-cnn", 10, in_channels=1, width=8)
    assert kwargs["width"] == 8
    model = build_model("digits-cnn", 10, in_channels=1, width=8)
    assert model.fc.in_features == 32


def test_resnet18_32x32_keys_match_torchvision_resnet18():
    import torchvision

    ours = build_model("resnet18-32x32", 10)
    ref = torchvision.models.resnet18(num_classes=10)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours.conv1.kernel_size == (3, 3) and ours.conv1.stride == (1, 1)
    assert isinstance(ours.maxpool, nn.Identity)
    # the 32x32 stem keeps a 4x4 map at the last stage (torchvision's stem would give 1x1)
    with torch.no_grad():
        assert ours.feature_maps(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)
        assert ours.features(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_digits_cnn_has_batchnorm_after_every_conv():
    # LogitNorm does not train this kind of network without normalisation layers
    model = build_model("digits-cnn", 10, in_channels=1)
    mods = list(model.modules())
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    for i in convs:
        assert isinstance(mods[i + 1], nn.BatchNorm2d)


@pytest.mark.parametrize("name", ["WRN-40-2", "digits_cnn", " Resnet18-32x32 "])
def test_names_are_case_and_separator_insensitive(name):
    arch_class, _ = arch_spec(name, 10)
    assert arch_class in {e.arch_class for e in ARCHS.values()}


def test_unknown_arch_names_closest_match():
    with pytest.raises(UnknownNameError) as err:
        build_model("wrn-40-3", 10)
    assert err.value.closest == "wrn-40-2"
    assert "wrn-40-2" in str(err.value) and "digits-cnn" in str(err.value)
    with pytest.raises(ValueError):  # also a ValueError for library users
        arch_spec("vit", 10)


def install_arch_distribution(root, monkeypatch, folder, name_line, module):
    """A dist-info ``folder`` in ``root`` (METADATA with ``name_line``, which may be empty)
    declaring ``tiny = <module>:Tiny`` in the architecture entry-point group, the module
    beside it, ``root`` on ``sys.path``."""
    import sys

    from logitnorm_plugin.registry.architectures import ARCH_GROUP

    dist = root / folder
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\n{name_line}Version: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ARCH_GROUP}]\ntiny = {module}:Tiny\n")
    (root / f"{module}.py").write_text(
        "import torch\nclass Tiny(torch.nn.Linear):\n"
        "    def __init__(self, num_classes=2):\n        super().__init__(4, num_classes)\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_only_the_closed_table_is_ever_built(tmp_path, monkeypatch):
    from logitnorm_plugin._core.errors import UntrustedFileError
    from logitnorm_plugin.registry.architectures import build_arch, trusted_arch_classes

    for path in ("os.system", "builtins.eval", "subprocess.Popen", "torch.nn.Linear",
                 "pytorch_ood.model.registry.load_model", "torchvision.models.get_model"):
        with pytest.raises(UntrustedFileError, match="not in the table"):
            resolve_class(path, "card.json")
    table = trusted_arch_classes()
    assert {"pytorch_ood.model.WideResNet", "pytorch_ood.model.ResNet18",
            "logitnorm_plugin.models.DigitsCNN", "torchvision.models.resnet18"} <= set(table)
    model = build_arch("torchvision.models.resnet18", {"num_classes": 3})
    assert model.fc.out_features == 3
    with pytest.raises(UntrustedFileError, match="pretrained weights"):
        build_arch("torchvision.models.resnet18", {"weights": "IMAGENET1K_V1"})
    with pytest.raises(UntrustedFileError, match="argument names"):
        build_arch("logitnorm_plugin.models.DigitsCNN", {"not a name": 1})
    # an installed distribution may add architectures through the entry-point group
    install_arch_distribution(tmp_path, monkeypatch, "my_nets-1.0.dist-info", "Name: my-nets\n",
                              "my_nets")
    assert build_arch("my_nets.Tiny", {"num_classes": 5}).out_features == 5
    monkeypatch.setenv("LOGITNORM_PLUGIN_NO_THIRD_PARTY", "1")
    with pytest.raises(UntrustedFileError):
        resolve_class("my_nets.Tiny")


def test_a_damaged_distribution_declaring_an_architecture_breaks_nothing(tmp_path, monkeypatch):
    """A dist-info without a ``Name`` (a damaged install) that declares an architecture: the
    table is still built (its entry counts as third-party, as in the registry)."""
    from logitnorm_plugin._core.errors import UntrustedFileError
    from logitnorm_plugin.registry.architectures import build_arch

    install_arch_distribution(tmp_path, monkeypatch, "nameless-1.0.dist-info", "",
                              "nameless_nets")
    assert build_arch("logitnorm_plugin.models.DigitsCNN", {"num_classes": 3}) is not None
    assert build_arch("nameless_nets.Tiny", {"num_classes": 5}).out_features == 5
    monkeypatch.setenv("LOGITNORM_PLUGIN_NO_THIRD_PARTY", "1")
    assert build_arch("logitnorm_plugin.models.DigitsCNN", {"num_classes": 3}) is not None
    with pytest.raises(UntrustedFileError, match="not in the table"):
        resolve_class("nameless_nets.Tiny")
