"""The building blocks of RegNet/AnyNet, on stock PyTorch ops only.

Attribute names (.conv/.bn/.act, .reduce/.expand, .a/.b/.se/.c/.proj) are a contract: the fused
modules in regnet_ext.nn and the weight interchange code find the layers by these names.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .spec import BlockSpec

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


class ConvBNAct(nn.Module):
    """Conv2d (no bias, 'same' padding for odd k) -> BatchNorm2d -> ReLU (or identity)."""

    def __init__(self, w_in, w_out, kernel_size, stride=1, groups=1, relu=True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size: expected an odd size, got {kernel_size}")
        self.conv = nn.Conv2d(w_in, w_out, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(w_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: scales each channel by a gate computed from the global mean."""

    def __init__(self, w, w_se):
        super().__init__()
        if w < 1 or w_se < 1:
            raise ValueError(f"w, w_se: expected both >= 1, got w={w}, w_se={w_se}")
        self.reduce = nn.Conv2d(w, w_se, 1, bias=True)
        self.expand = nn.Conv2d(w_se, w, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class ResBottleneckBlock(nn.Module):
    """Residual bottleneck block with a grouped 3x3 conv: the X block, or the Y block with SE."""

    def __init__(self, block_spec: BlockSpec):
        super().__init__()
        if not isinstance(block_spec, BlockSpec):
            raise TypeError(f"block_spec: expected a BlockSpec, got {type(block_spec).__name__}")
        b = block_spec
        inner = b.inner_width
        self.a = ConvBNAct(b.w_in, inner, 1)
        self.b = ConvBNAct(inner, inner, 3, stride=b.stride, groups=b.groups)
        self.se = SqueezeExcite(inner, b.se_width) if b.se_width > 0 else None
        self.c = ConvBNAct(inner, b.w_out, 1, relu=False)
        self.proj = (ConvBNAct(b.w_in, b.w_out, 1, stride=b.stride, relu=False)
                     if b.has_projection else None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.b(self.a(x))
        if self.se is not None:
            y = self.se(y)
        y = self.c(y)
        return self.act(y + (self.proj(x) if self.proj is not None else x))


class Stem(ConvBNAct):
    """3x3 stride-2 conv from the image channels to the stem width, BN, ReLU."""

    def __init__(self, in_channels, stem_width):
        super().__init__(in_channels, stem_width, 3, stride=2)


class Head(nn.Module):
    """Global average pool and a fully connected classifier."""

    def __init__(self, w_in, num_classes):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w_in, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))
