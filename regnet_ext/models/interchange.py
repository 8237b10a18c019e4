"""Weight interchange between our RegNets and torchvision's, timm's and pycls's.

Colour order: our models take RGB input, like torchvision and timm. pycls's checkpoints were
trained on BGR input, so from_pycls/load_pycls reverse the stem conv's input channels by default
(and to_pycls reverses them back); timm already did the same when it ported pycls's weights.

Architectures: torchvision's generator rounds differently from pycls's, which changes three of
its builders (RegNetX-400MF, RegNetY-800MF, RegNetY-8.0GF): torchvision weights go into models
built with ``rounding="torchvision"``. timm's standard models are pycls's architectures, and its
``_tv`` variants torchvision's.

* Key mapping, pure functions on state_dicts: from_torchvision / to_torchvision, from_timm /
  to_timm, from_pycls / to_pycls (``bgr_to_rgb`` / ``rgb_to_bgr``), convert_keys.
* Whole models: load_torchvision / to_torchvision_model, load_timm / to_timm_model, load_pycls.
* Checks: spec_from_state_dict, stage_shapes, check_architecture, load_checked (a strict load
  whose error names the stage and width that differ).
"""
from .interchange_arch import (StageShape, check_architecture, load_checked,
                               spec_from_state_dict, stage_shapes, state_dict_fits)
from .interchange_keys import (LAYOUTS, convert_keys, from_pycls, from_timm, from_torchvision,
                               to_pycls, to_timm, to_torchvision)
from .interchange_pycls import load_pycls
from .interchange_timm import load_timm, timm_name, timm_spec, to_timm_model
from .interchange_torchvision import (TORCHVISION_BUILDERS, load_torchvision, to_torchvision_model,
                                      torchvision_spec)

__all__ = [
    "from_torchvision", "to_torchvision", "from_timm", "to_timm", "from_pycls", "to_pycls",
    "convert_keys", "LAYOUTS",
    "load_torchvision", "to_torchvision_model", "torchvision_spec", "TORCHVISION_BUILDERS",
    "load_timm", "to_timm_model", "timm_spec", "timm_name", "load_pycls",
    "spec_from_state_dict", "stage_shapes", "StageShape", "check_architecture", "load_checked",
    "state_dict_fits",
]
