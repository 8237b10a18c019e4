"""Fused modules and fuse()/unfuse() for RegNets (ours, torchvision's, timm's).

    from regnet_ext.nn import fuse, unfuse
    fuse(model)              # in place; same Parameters, buffers and state_dict keys
    unfuse(model)            # stock modules back

Needs the compiled extension (regnet_ext.ops); importing this package fails clearly without it.
"""
from .._extension import require

require()  # the build hint, not a bare "cannot import name '_C'"

from .fuse_model import FuseReport, fuse, unfuse, verify_device  # noqa: E402
from .modules import (FusedBranch, FusedConvBNAct, FusedHead, FusedLinear, FusedResBottleneck,  # noqa: E402
                      FusedSqueezeExcite)

__all__ = ["fuse", "unfuse", "verify_device", "FuseReport", "FusedConvBNAct", "FusedSqueezeExcite",
           "FusedResBottleneck", "FusedBranch", "FusedLinear", "FusedHead"]
