"""Whole-model interchange with torchvision's RegNets (torchvision is imported lazily)."""
from collections.abc import Mapping
from dataclasses import replace

from torch import nn

from .anynet import AnyNet
from .interchange_arch import (assign_weights, build_on_meta, check_architecture,
                               spec_from_state_dict, state_dict_fits)
from .interchange_keys import from_torchvision, to_torchvision
from .layers import BN_EPS
from .zoo import regnet_spec

# Every RegNet builder in torchvision.models, with our name for its architecture.
TORCHVISION_BUILDERS = {
    "regnet_x_400mf": "RegNetX-400MF", "regnet_x_800mf": "RegNetX-800MF",
    "regnet_x_1_6gf": "RegNetX-1.6GF", "regnet_x_3_2gf": "RegNetX-3.2GF",
    "regnet_x_8gf": "RegNetX-8.0GF", "regnet_x_16gf": "RegNetX-16GF",
    "regnet_x_32gf": "RegNetX-32GF",
    "regnet_y_400mf": "RegNetY-400MF", "regnet_y_800mf": "RegNetY-800MF",
    "regnet_y_1_6gf": "RegNetY-1.6GF", "regnet_y_3_2gf": "RegNetY-3.2GF",
    "regnet_y_8gf": "RegNetY-8.0GF", "regnet_y_16gf": "RegNetY-16GF",
    "regnet_y_32gf": "RegNetY-32GF",
    "regnet_y_128gf": None,
}
# RegNetY-128GF (SEER/SWAG) is not one of the paper's 24 models: torchvision's parameters.
_REGNET_Y_128GF = dict(w0=456, wa=160.83, wm=2.52, depth=27, group_width=264, se_ratio=0.25)


def _torchvision():
    try:
        import torchvision
    except ImportError as e:
        raise ImportError("torchvision is needed for torchvision interchange: "
                          "pip install torchvision") from e
    return torchvision


def torchvision_spec(builder, num_classes=1000):
    """Our AnyNetSpec for a torchvision RegNet builder (rounding="torchvision")."""
    if builder not in TORCHVISION_BUILDERS:
        raise ValueError(f"builder: expected one of torchvision's RegNet builders "
                         f"{list(TORCHVISION_BUILDERS)}, got {builder!r}")
    name = TORCHVISION_BUILDERS[builder]
    if name is None:
        spec = regnet_spec(rounding="torchvision", num_classes=num_classes, **_REGNET_Y_128GF)
        return replace(spec, name="RegNetY-128GF")
    return regnet_spec(name, rounding="torchvision", num_classes=num_classes)


def _check_module(module):
    """Refuses torchvision RegNets our AnyNet cannot reproduce (other norm, activation, block)."""
    regnet = _torchvision().models.regnet
    if not isinstance(module, regnet.RegNet):
        raise TypeError(f"model: expected a torchvision RegNet, a builder name or a state_dict, "
                        f"got {type(module).__name__}")
    for name, m in module.named_modules():
        if isinstance(m, nn.BatchNorm2d) and m.eps != BN_EPS:
            raise ValueError(f"model: {name} has BatchNorm eps={m.eps}; ours use {BN_EPS}")
        if isinstance(m, nn.modules.batchnorm._NormBase) and not isinstance(m, nn.BatchNorm2d):
            raise ValueError(f"model: {name} is a {type(m).__name__}; ours use BatchNorm2d")
        if (type(m).__module__ == nn.ReLU.__module__
                and not isinstance(m, (nn.ReLU, nn.Sigmoid))):
            raise ValueError(f"model: {name} is a {type(m).__name__}; ours use ReLU")
    for stage in module.trunk_output:
        for block in stage:
            if not isinstance(block, regnet.ResBottleneckBlock):
                raise ValueError(f"model: {type(block).__name__} blocks are not supported, "
                                 "only ResBottleneckBlock")
    if module.stem[0].stride != (2, 2) or module.stem[0].kernel_size != (3, 3):
        raise ValueError("model: only the standard 3x3 stride-2 stem is supported")


def _strides(module):
    return [stage[0].f.b[0].stride[0] for stage in module.trunk_output]


def _match_builder(spec):
    """The torchvision builder whose architecture is `spec`, or None."""
    for builder in TORCHVISION_BUILDERS:
        candidate = torchvision_spec(builder, num_classes=spec.num_classes)
        if candidate == spec:
            return candidate.name
    return None


def load_torchvision(model, *, weights="DEFAULT"):
    """Our AnyNet with a copy of a torchvision RegNet's weights; outputs match torchvision's.

    `model` is a torchvision builder name ("regnet_y_400mf"; built with ``weights``, which
    torchvision downloads unless cached: pass ``weights=None`` for its random initialisation), a
    torchvision RegNet module, or a torchvision RegNet state_dict (strides assumed 2).
    Named builders get our architecture from our generator with rounding="torchvision" and a
    ValueError names the stage and width where torchvision's model differs; otherwise the
    architecture is read from the weights. The result is on the weights' device and dtype, in
    the source module's train/eval mode (eval for a state_dict). Both take RGB input."""
    if isinstance(model, str):
        builder = model
        spec = torchvision_spec(builder)  # validates the name before torchvision builds anything
        module = getattr(_torchvision().models, builder)(weights=weights)
    elif isinstance(model, Mapping):
        builder, module = None, None
        state_dict = from_torchvision(model)
    else:
        builder, module = None, model
        _check_module(module)  # (None too: a TypeError naming what it takes)
    if module is not None:
        state_dict = from_torchvision(module.state_dict())
    num_classes = state_dict["head.fc.weight"].shape[0] if "head.fc.weight" in state_dict else 1000
    if builder is not None:
        spec = torchvision_spec(builder, num_classes=num_classes)
    else:
        spec = spec_from_state_dict(state_dict, strides=_strides(module) if module else None, layout="torchvision")
        spec = replace(spec, name=_match_builder(spec) or "torchvision RegNet")
    ours = build_on_meta(lambda: AnyNet(spec))
    check_architecture(ours, state_dict, source=f"torchvision's {builder or 'RegNet'} weights", layout="torchvision")
    return assign_weights(ours, state_dict).train(module.training if module is not None else False)


def to_torchvision_model(model):
    """A torchvision RegNet with our AnyNet's architecture and weights (same outputs)."""
    if not isinstance(model, AnyNet):
        raise TypeError(f"model: expected a regnet_ext AnyNet, got {type(model).__name__}")
    spec = model.spec
    if spec.in_channels != 3:
        raise ValueError(f"model: torchvision's RegNet takes 3 input channels, this one takes "
                         f"{spec.in_channels}")
    regnet = _torchvision().models.regnet
    params = regnet.BlockParams(depths=list(spec.depths), widths=list(spec.widths),
                                group_widths=list(spec.group_widths),
                                bottleneck_multipliers=list(spec.bottleneck_multipliers),
                                strides=list(spec.strides), se_ratio=spec.se_ratio or None)
    theirs = build_on_meta(lambda: regnet.RegNet(params, num_classes=spec.num_classes,
                                                 stem_width=spec.stem_width))
    ours_state = model.state_dict()
    state_dict_fits(from_torchvision(theirs.state_dict()), ours_state,
                    source="our model", target="the torchvision model")
    return assign_weights(theirs, to_torchvision(ours_state)).train(model.training)
