"""RegNet/AnyNet models: the width/depth generator, the modules, the standard model zoo and
analytic complexity. Everything here runs on stock PyTorch ops, with or without the extension."""
from .anynet import AnyNet
from .complexity import Complexity, complexity
from .generator import ROUNDINGS, generate_regnet
from .spec import AnyNetSpec, BlockSpec
from .zoo import STANDARD_MODELS, canonical_name, regnet, regnet_spec

__all__ = [
    "AnyNet", "AnyNetSpec", "BlockSpec", "generate_regnet", "regnet", "regnet_spec",
    "canonical_name", "STANDARD_MODELS", "complexity", "Complexity", "ROUNDINGS",
]
