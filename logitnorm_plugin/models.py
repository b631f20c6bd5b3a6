"""The networks this package defines: :class:`DigitsCNN` and :class:`ResNet18CIFAR`.

Their dotted paths (``logitnorm_plugin.models.DigitsCNN``) are written into run folders and
model cards as ``arch_class``, so they stay here; the table of architectures by name is
:mod:`logitnorm_plugin.registry.architectures`.
"""

from __future__ import annotations

import torch
from pytorch_ood.model import ResNet18
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["DigitsCNN", "ResNet18CIFAR"]


class ResNet18CIFAR(ResNet18):
    """ResNet-18 for 32 x 32 inputs (the OpenOOD v1.5 ``resnet18_32x32`` layout).

    The stem is a 3 x 3 convolution with stride 1 and no max-pool, so a 32 x 32 image reaches
    the last stage at 4 x 4 instead of 1 x 1. Everything else, including the state-dict keys,
    is :class:`pytorch_ood.model.ResNet18` (``torchvision.models.resnet18``); ``features``,
    ``feature_maps`` and ``forward_feature_maps`` work unchanged because the stem is replaced by
    modules with the same attribute names.

    :param num_classes: number of classes :math:`K`
    :param in_channels: number of input planes
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, **kwargs):
        super().__init__(num_classes=num_classes, **kwargs)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        # same init as torchvision uses for every other conv of the network
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()


class DigitsCNN(nn.Module):
    """A small CNN for 1 x 8 x 8 digits, BatchNorm after every convolution.

    Layout: ``conv3x3(w)-BN-ReLU, conv3x3(2w)-BN-ReLU, maxpool2, conv3x3(4w)-BN-ReLU,
    global average pool, [dropout], linear``. About 100k parameters for ``width=32``; a CPU
    epoch over the digits takes well under a second.

    :param num_classes: number of classes :math:`K`
    :param in_channels: number of input planes
    :param width: channels of the first convolution
    :param drop_rate: dropout probability before the classifier
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 32, drop_rate: float = 0.0
    ):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.block1 = block(in_channels, width)
        self.block2 = block(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.block3 = block(2 * width, 4 * width)
        self.drop_rate = drop_rate
        self.fc = nn.Linear(4 * width, num_classes)

    def feature_maps(self, x: Tensor) -> Tensor:
        """:param x: ``B x C x H x W``; :return: ``B x 4w x H/2 x W/2`` feature maps"""
        return self.block3(self.pool(self.block2(self.block1(x))))

    def forward_feature_maps(self, x: Tensor) -> Tensor:
        """:param x: feature maps from :meth:`feature_maps`; :return: ``B x K`` logits"""
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.fc(x)

    def features(self, x: Tensor) -> Tensor:
        """:param x: ``B x C x H x W``; :return: ``B x 4w`` pooled features"""
        return torch.flatten(F.adaptive_avg_pool2d(self.feature_maps(x), 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``B x C x H x W``; :return: ``B x K`` logits"""
        return self.forward_feature_maps(self.feature_maps(x))
