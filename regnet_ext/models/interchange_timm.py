"""Whole-model interchange with timm's RegNets (timm is an optional dependency, imported lazily).

Which rounding timm uses: timm computes the continuous widths in float32 (like torchvision) but
makes widths and group widths compatible with Python's round (half to even, like pycls), so its
standard regnetx_*/regnety_* models are pycls's architectures: rounding="pycls". Its ``_tv``
variants (regnetx_004_tv, regnety_008_tv, regnety_080_tv; group_min_ratio=0.9) reproduce
torchvision's rounding: rounding="torchvision". The float32 widths change no standard model.
"""
import re
from collections.abc import Mapping
from dataclasses import replace

from torch import nn

from .anynet import AnyNet
from .interchange_arch import (assign_weights, build_on_meta, check_architecture, match_standard,
                               spec_from_state_dict, state_dict_fits)
from .interchange_keys import from_timm, to_timm
from .layers import BN_EPS
from .zoo import canonical_name, regnet_spec

# timm marks its torchvision-rounded variants with this suffix (only where the rounding matters).
_TV_SUFFIX = "_tv"
_TIMM_STANDARD = re.compile(r"^(regnet[xy]_\d{3})(_tv)?$")  # "regnety_016", "regnety_008_tv"


def _timm():
    try:
        import timm
    except ImportError as e:
        raise ImportError("timm is needed for timm interchange: pip install timm") from e
    return timm


def timm_name(name, rounding="pycls"):
    """timm's model name for a standard model ("RegNetY-1.6GF" -> "regnety_016"); with
    rounding="torchvision", the ``_tv`` variant where timm has one (the architecture differs)."""
    label = canonical_name(name)
    family, size, unit = re.match(r"^RegNet([XY])-([\d.]+)(MF|GF)$", label).groups()
    tenths_of_gf = round(float(size) * 10) if unit == "GF" else round(float(size) / 100)
    base = f"regnet{family.lower()}_{tenths_of_gf:03d}"
    if rounding == "torchvision" and (regnet_spec(label, rounding="torchvision")
                                      != regnet_spec(label, rounding="pycls")):
        return base + _TV_SUFFIX
    return base


def timm_spec(name, num_classes=1000):
    """Our AnyNetSpec for one of timm's standard RegNets (e.g. "regnety_016", "regnety_008_tv"),
    or None for other timm names (their architecture is read from the model's weights)."""
    m = _TIMM_STANDARD.match(name.split(".")[0])  # "regnety_032.ra_in1k": drop the weights tag
    if not m:
        return None
    try:
        label = canonical_name(m.group(1))
    except ValueError:
        return None
    rounding = "torchvision" if m.group(2) else "pycls"
    return regnet_spec(label, rounding=rounding, num_classes=num_classes)


def _check_module(module):
    """Refuses timm RegNets our AnyNet cannot reproduce: pre-activation (regnetv), other norms or
    activations (regnety_040_sgn), dilation, average-pool shortcuts, a final conv, other pooling."""
    regnet = _timm().models.regnet
    if not isinstance(module, regnet.RegNet):
        raise TypeError(f"model: expected a timm RegNet, a timm model name or a state_dict, "
                        f"got {type(module).__name__}")
    if not isinstance(module.final_conv, nn.Identity):
        raise ValueError("model: a final conv / final activation (num_features, linear_out or "
                         "preact) is not supported")
    if getattr(module.head.global_pool, "pool_type", "avg") != "avg":
        raise ValueError(f"model: global pool {module.head.global_pool.pool_type!r} is not "
                         "supported, only 'avg'")
    if not isinstance(module.head.fc, nn.Linear):
        raise ValueError("model: a timm RegNet without a classifier (num_classes=0) is not "
                         "supported")
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and not isinstance(m, nn.BatchNorm2d):
            raise ValueError(f"model: {name} is a {type(m).__name__}; ours use BatchNorm2d")
        if isinstance(m, nn.GroupNorm):
            raise ValueError(f"model: {name} is a GroupNorm; ours use BatchNorm2d")
        if isinstance(m, nn.BatchNorm2d) and m.eps != BN_EPS:
            raise ValueError(f"model: {name} has BatchNorm eps={m.eps}; ours use {BN_EPS}")
        if isinstance(m, nn.Conv2d) and m.dilation != (1, 1):
            raise ValueError(f"model: {name} is dilated (output_stride < 32); ours are not")
        if type(m).__module__ == nn.ReLU.__module__ and not isinstance(m, (nn.ReLU, nn.Sigmoid)):
            raise ValueError(f"model: {name} is a {type(m).__name__}; ours use ReLU")
    for i in range(1, 5):
        for block_name, block in getattr(module, f"s{i}").named_children():
            where = f"s{i}.{block_name}"
            if not isinstance(block, regnet.Bottleneck):
                raise ValueError(f"model: {where} is a {type(block).__name__}; only the "
                                 "post-activation Bottleneck is supported")
            if not isinstance(block.act3, nn.ReLU):
                raise ValueError(f"model: {where} has a linear output (linear_out); not supported")
            if block.downsample is None or isinstance(block.downsample, nn.Sequential):
                raise ValueError(f"model: {where} has no shortcut or an average-pool shortcut; "
                                 "only the 1x1 conv projection is supported")
            if block.conv2.conv.kernel_size != (3, 3):
                raise ValueError(f"model: {where} does not have a 3x3 grouped conv")


def _strides(module):
    return [getattr(module, f"s{i}").b1.conv2.conv.stride[0] for i in range(1, 5)]


def load_timm(model, *, pretrained=True):
    """Our AnyNet with a copy of a timm RegNet's weights; outputs match timm's (RGB input).

    `model` is a timm model name ("regnety_016", "regnety_008_tv", "regnety_1280"; created with
    ``pretrained``, which timm downloads unless cached: pass ``pretrained=False`` for its random
    initialisation), a timm RegNet module, or a timm RegNet state_dict (strides assumed 2).
    Standard names get our architecture from our generator (rounding="pycls", or "torchvision"
    for ``_tv`` names) and a ValueError names the stage and width where timm's model differs;
    otherwise the architecture is read from the weights."""
    module = None
    if isinstance(model, str):
        label = model
        module = _timm().create_model(model, pretrained=pretrained)
    elif isinstance(model, Mapping):
        label = "RegNet"
        state_dict = from_timm(model)
    else:
        label, module = "RegNet", model
        _check_module(module)  # (None too: a TypeError naming what it takes)
    if module is not None:
        state_dict = from_timm(module.state_dict())
    num_classes = state_dict["head.fc.weight"].shape[0] if "head.fc.weight" in state_dict else 1000
    spec = timm_spec(label, num_classes) if isinstance(model, str) else None
    if spec is None:
        spec = spec_from_state_dict(state_dict, strides=_strides(module) if module else None, layout="timm")
        spec = replace(spec, name=match_standard(spec)[0] or f"timm {label}")
    ours = build_on_meta(lambda: AnyNet(spec))
    check_architecture(ours, state_dict, source=f"timm's {label} weights", layout="timm")
    return assign_weights(ours, state_dict).train(module.training if module is not None else False)


def to_timm_model(model, name=None):
    """A timm RegNet with our AnyNet's architecture and weights (same outputs).

    timm builds RegNets from generator parameters only, so the architecture must be one of timm's
    models: found automatically among the standard ones, or named with `name` ("regnety_1280").
    A ValueError names the stage and width where timm's model differs from ours."""
    if not isinstance(model, AnyNet):
        raise TypeError(f"model: expected a regnet_ext AnyNet, got {type(model).__name__}")
    spec = model.spec
    if name is None:
        label, rounding = match_standard(spec)
        if label is None:
            raise ValueError("model: its architecture is not one of timm's standard RegNets; "
                             "pass name= with the timm model that has it")
        name = timm_name(label, rounding)
    elif not isinstance(name, str):
        raise TypeError(f"name: expected a timm model name, got {type(name).__name__}")
    theirs = build_on_meta(lambda: _timm().create_model(
        name, pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_channels))
    _check_module(theirs)
    ours_state = model.state_dict()
    state_dict_fits(from_timm(theirs.state_dict()), ours_state, source="our model",
                    target=f"timm's {name}")
    return assign_weights(theirs, to_timm(ours_state)).train(model.training)
