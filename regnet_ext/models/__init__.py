"""RegNet/AnyNet models: the width/depth generator, the modules, the standard model zoo and
analytic complexity. Everything here runs on stock PyTorch ops, with or without the extension."""
from .anynet import AnyNet
from .complexity import Complexity, complexity
from .generator import ROUNDINGS, generate_regnet
from .spec import AnyNetSpec, BlockSpec
from .interchange import (from_pycls, from_timm, from_torchvision, load_pycls, load_timm,
                          load_torchvision, to_pycls, to_timm, to_timm_model, to_torchvision,
                          to_torchvision_model)
from .zoo import STANDARD_MODELS, canonical_name, regnet, regnet_spec

__all__ = [
    "AnyNet", "AnyNetSpec", "BlockSpec", "generate_regnet", "regnet", "regnet_spec",
    "canonical_name", "STANDARD_MODELS", "complexity", "Complexity", "ROUNDINGS",
    "from_torchvision", "to_torchvision", "from_timm", "to_timm", "from_pycls", "to_pycls",
    "load_torchvision", "to_torchvision_model", "load_timm", "to_timm_model", "load_pycls",
]
