"""Loading pycls checkpoints (the paper authors' own code) into our models; no pycls needed."""
from dataclasses import replace

from .anynet import AnyNet
from .interchange_arch import (assign_weights, build_on_meta, check_architecture, match_standard,
                               spec_from_state_dict)
from .interchange_keys import from_pycls


def load_pycls(checkpoint, *, bgr_to_rgb=True):
    """Our AnyNet with the weights of a pycls checkpoint (the dict pycls saves, or its
    "model_state"), e.g. from pycls's model zoo loaded with torch.load.

    pycls's models take BGR input; by default the stem conv is reordered so ours takes RGB, like
    torchvision and timm (``bgr_to_rgb=False`` keeps BGR). The architecture is read from the
    weights (strides 2) and named after the standard model it matches, if any. Returns the model
    in eval mode."""
    state_dict = from_pycls(checkpoint, bgr_to_rgb=bgr_to_rgb)
    spec = spec_from_state_dict(state_dict, layout="pycls")
    label, _ = match_standard(spec)
    spec = replace(spec, name=label or "pycls RegNet")
    ours = build_on_meta(lambda: AnyNet(spec))
    check_architecture(ours, state_dict, source="the pycls checkpoint", layout="pycls")
    return assign_weights(ours, state_dict).eval()
