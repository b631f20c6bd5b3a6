"""The model split adapter: for every kind of model it understands, the parts it returns give
the model's own logits (``head(encoder(x)) == model(x)`` and the same through the backbone);
models it does not understand get an error that names what is missing."""

import pytest
import torch
import torchvision
from pytorch_ood.model import WideResNet
from torch import nn

from logitnorm_plugin._core.errors import UnsupportedModelError, UserError
from logitnorm_plugin.models import DigitsCNN, ResNet18CIFAR
from logitnorm_plugin.registry.split import LAYERS, ModelParts, split_model


class TimmStyleNet(nn.Module):
    """A tiny stand-in with timm's interface (timm itself is not a dependency)."""

    def __init__(self, num_classes: int = 3, tokens: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)
        self.tokens = tokens

    def forward_features(self, x):
        maps = torch.relu(self.conv(x))
        return maps.flatten(2).transpose(1, 2) if self.tokens else maps  # B x N x C for a ViT

    def forward_head(self, x, pre_logits: bool = False):
        pooled = x.mean(dim=1) if self.tokens else x.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class DeclaredNet(nn.Module):
    """A user model declaring the split protocol with a ``head`` attribute."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


class OpaqueNet(nn.Module):
    """Nothing a split could use: a convolution as classifier."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 4)

    def forward(self, x):
        return self.conv(x).flatten(1)


# kind -> (builder, input shape, expected ``ModelParts.kind``, feature maps known)
KINDS = {
    "digits-cnn": (lambda: DigitsCNN(5, 1, width=4, drop_rate=0.2), (1, 8, 8),
                   "split protocol", True),
    "resnet18-32x32": (lambda: ResNet18CIFAR(4), (3, 16, 16), "split protocol", True),
    "pytorch-ood-wrn": (lambda: WideResNet(4, depth=10, widen_factor=1), (3, 32, 32),
                        "split protocol", True),
    "torchvision-resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=4),
                             (3, 16, 16), "torchvision ResNet", True),
    "torchvision-mobilenet_v3_small": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=4),
        (3, 16, 16), "final nn.Linear in `classifier`", True),
    "torchvision-mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=4),
        (3, 16, 16), "final nn.Linear in `classifier`", False),
    "timm-style": (TimmStyleNet, (3, 6, 6), "timm-style", True),
    "declared": (DeclaredNet, (3, 2, 2), "split protocol", False),
    "sequential": (lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), (6,),
                   "nn.Sequential", False),
}


def build(kind):
    builder, shape, _, _ = KINDS[kind]
    torch.manual_seed(0)
    model = builder().eval()
    return model, torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_parts_give_the_models_logits(kind):
    model, x = build(kind)
    _, _, expected_kind, has_maps = KINDS[kind]
    keys = list(model.state_dict())
    parts = split_model(model)
    assert isinstance(parts, ModelParts) and parts.kind == expected_kind
    assert isinstance(parts.head, nn.Linear)
    with torch.no_grad():
        logits = model(x)
        z = parts.encoder(x)
        assert z.shape == (3, parts.head.in_features)
        torch.testing.assert_close(parts.head(z), logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z @ parts.w.T + parts.b, logits, atol=1e-5, rtol=1e-5)
        backbone, head = parts.layer("penultimate")
        torch.testing.assert_close(head(backbone(x)), logits, atol=1e-5, rtol=1e-5)
        assert (parts.backbone is not None) == has_maps
        if has_maps:
            maps = parts.backbone(x)
            assert maps.dim() == 4 and maps.shape[0] == 3
            torch.testing.assert_close(parts.backbone_head(maps), logits, atol=1e-5, rtol=1e-5)
            backbone, head = parts.layer("feature_maps")
            torch.testing.assert_close(head(backbone(x)), logits, atol=1e-5, rtol=1e-5)
    assert parts.check(x) is parts
    # splitting adds nothing to the model: same state-dict keys, no hooks left behind
    assert list(model.state_dict()) == keys
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_package_models_keep_their_state_dict_keys_and_load_checkpoints():
    # the split reads the existing attributes, so checkpoints of both architectures still load
    for builder in (lambda: DigitsCNN(10, 1), lambda: ResNet18CIFAR(10)):
        torch.manual_seed(0)
        saved = builder().state_dict()
        model = builder()
        model.load_state_dict(saved)  # strict
        parts = split_model(model)
        assert parts.head is model.fc and parts.encoder == model.features
        assert parts.backbone == model.feature_maps
        assert parts.backbone_head == model.forward_feature_maps


def test_model_lacking_everything_gets_an_error_naming_the_missing_pieces():
    with pytest.raises(UnsupportedModelError) as info:
        split_model(OpaqueNet())
    message = str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert "OpaqueNet" in message
    for missing in ("`features(x)`", "nn.Linear", "forward_features", "get_classifier"):
        assert missing in message
    # and says how to declare the protocol
    assert "head(features(x)) == model(x)" in message and "feature_maps(x)" in message


def test_error_names_only_what_is_missing():
    class FeaturesOnly(OpaqueNet):
        def features(self, x):
            return x.flatten(1)

    message = str(pytest.raises(UnsupportedModelError, split_model, FeaturesOnly()).value)
    missing = message.split("Declare")[0]
    assert "no final nn.Linear" in missing and "`features(x)`" not in missing


def test_feature_maps_layer_of_a_model_without_maps_is_a_clear_error():
    model, _ = build("torchvision-mobilenet_v2")
    parts = split_model(model)
    with pytest.raises(UnsupportedModelError, match="feature_maps"):
        parts.layer("feature_maps")
    with pytest.raises(ValueError, match="penultimate"):
        parts.layer("conv3")
    assert LAYERS == ("penultimate", "feature_maps")


def test_timm_tokens_are_no_feature_maps():
    torch.manual_seed(0)
    model = TimmStyleNet(tokens=True).eval()
    x = torch.randn(2, 3, 4, 4)
    parts = split_model(model)
    torch.testing.assert_close(parts.head(parts.encoder(x)), model(x))
    backbone, _ = parts.layer("feature_maps")
    with pytest.raises(UnsupportedModelError, match="penultimate"):
        backbone(x)


def test_check_catches_a_model_that_changes_the_final_layers_output():
    class Rescaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = nn.Linear(4, 2)

        def forward(self, x):
            return 2 * self.classifier(x)

    parts = split_model(Rescaled())
    with pytest.raises(UnsupportedModelError, match="differs from model"):
        parts.check(torch.randn(3, 4))


def test_hooked_encoder_is_differentiable():
    # MahalanobisODIN perturbs inputs along the gradient of the features
    model, x = build("torchvision-mobilenet_v3_small")
    x.requires_grad_(True)
    split_model(model).encoder(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
