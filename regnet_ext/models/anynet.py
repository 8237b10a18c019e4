"""AnyNet: a stem, any number of stages of residual bottleneck blocks, and a head."""
import math
from collections import OrderedDict

from torch import nn

from .layers import Head, ResBottleneckBlock, Stem
from .spec import AnyNetSpec


class AnyNet(nn.Module):
    """The network an AnyNetSpec describes.

    Children: ``stem``, ``s1`` ... ``sN`` (each an nn.Sequential of blocks ``b1``, ``b2``, ...)
    and ``head``. Builds on stock PyTorch ops only; works in channels_last and under autocast.
    Parameters get the reference (pycls) initialisation.
    """

    def __init__(self, spec: AnyNetSpec):
        super().__init__()
        if not isinstance(spec, AnyNetSpec):
            raise TypeError(f"spec: expected an AnyNetSpec, got {type(spec).__name__}")
        self.spec = spec
        self.stem = Stem(spec.in_channels, spec.stem_width)
        stages = [[] for _ in range(spec.num_stages)]
        for block in spec.blocks():
            stages[block.stage].append((f"b{block.index + 1}", ResBottleneckBlock(block)))
        for i, blocks in enumerate(stages):
            self.add_module(f"s{i + 1}", nn.Sequential(OrderedDict(blocks)))
        self.head = Head(spec.widths[-1], spec.num_classes)
        self.reset_parameters()

    @property
    def stages(self):
        return [getattr(self, f"s{i + 1}") for i in range(self.spec.num_stages)]

    def reset_parameters(self):
        """pycls's ResNet-style init: conv N(0, sqrt(2 / fan_out)) with fan_out = k*k*C_out (not
        divided by groups), BN gamma 1 / beta 0, Linear N(0, 0.01) / bias 0. SE conv biases are
        zeroed (as torchvision does) so that a seeded model is fully reproducible."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        """Stem and stages: returns the last stage's feature map."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x):
        return self.head(self.forward_features(x))
