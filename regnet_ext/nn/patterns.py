"""Recognising fusable layer patterns in stock models by structure.

A pattern is recognised when the module's forward is one whose computation we know (nn.Sequential's,
or the forward of our, torchvision's or timm's RegNet layer classes, subclasses included when they
keep that forward) *and* its children have the structure that forward needs (Conv2d with a square
odd kernel and zero padding mode, affine BatchNorm2d of matching width, ReLU/Identity activations,
1x1 SE convs with biases, ...). Anything else is not matched, so fuse() leaves it untouched.

Each matcher returns a Match (what to build) or a string saying why the module does not match.
"""
import dataclasses
import sys

from torch import nn


@dataclasses.dataclass(frozen=True)
class ConvBNMatch:
    conv: str
    bn: str
    relu: bool


@dataclasses.dataclass(frozen=True)
class SEMatch:
    reduce: str
    expand: str


@dataclasses.dataclass(frozen=True)
class LinearMatch:
    pass


@dataclasses.dataclass(frozen=True)
class HeadMatch:
    pass


@dataclasses.dataclass(frozen=True)
class BlockMatch:
    parts: dict  # role -> dotted path of the stock layer inside the block
    shortcut: str  # "identity" | "proj" | "none"
    final_relu: bool


def _forward_is(module, cls):
    return cls is not None and isinstance(module, cls) and type(module).forward is cls.forward


def _optional_class(module_name, attr):
    """A class from an optional library, only if that library is already imported (models built
    with it exist only then)."""
    mod = sys.modules.get(module_name)
    return getattr(mod, attr, None) if mod is not None else None


def _ours(attr):
    return _optional_class("regnet_ext.models.layers", attr)


def _is_identity(module):
    return module is None or type(module) is nn.Identity


def _is_relu(module):
    return type(module) is nn.ReLU


def _is_sigmoid(module):
    # timm has its own Sigmoid module (same function, no state).
    timm_sigmoid = _optional_class("timm.layers.activations", "Sigmoid")
    return type(module) is nn.Sigmoid or (timm_sigmoid is not None and type(module) is timm_sigmoid)


def _check_conv(conv):
    if not isinstance(conv, nn.Conv2d) or type(conv).forward is not nn.Conv2d.forward:
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    k = conv.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0:
        return f"kernel {tuple(k)} is not square and odd"
    if conv.stride[0] != conv.stride[1] or tuple(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
        return "conv has unequal strides, dilation or a non-zero padding mode"
    if not isinstance(conv.padding, str) and conv.padding[0] != conv.padding[1]:
        return f"padding {tuple(conv.padding)} is not symmetric"
    return None


def _check_bn(bn, conv):
    timm_bn_act = _optional_class("timm.layers.norm_act", "BatchNormAct2d")
    known = (type(bn).forward is nn.BatchNorm2d.forward or isinstance(bn, nn.SyncBatchNorm)
             or _forward_is(bn, timm_bn_act))
    if not isinstance(bn, nn.BatchNorm2d | nn.SyncBatchNorm) or not known:
        return f"{type(bn).__name__} is not a BatchNorm2d"
    if not bn.affine:
        return "BatchNorm2d without affine parameters"
    if bn.num_features != conv.out_channels:
        return "BatchNorm2d width differs from the conv's output channels"
    return None


def _conv_bn(conv_name, conv, bn_name, bn, relu, bn_may_act=False):
    reason = _check_conv(conv) or _check_bn(bn, conv)
    if not reason and not bn_may_act and hasattr(bn, "act") and _timm_bn_relu(bn) is not False:
        reason = "its BatchNorm applies an activation of its own where this pattern expects none"
    return reason or ConvBNMatch(conv_name, bn_name, relu)


def _timm_bn_relu(bn):
    """timm's BatchNormAct2d applies its own activation: ReLU, identity, or unsupported (None)."""
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if not _is_identity(drop):
        return None
    return True if _is_relu(act) else (False if _is_identity(act) else None)


def match_conv_bn_act(module):
    """Conv2d -> BatchNorm2d [-> ReLU]."""
    children = list(module.named_children())
    if _forward_is(module, nn.Sequential):
        if len(children) in (2, 3) and isinstance(children[0][1], nn.Conv2d) \
                and isinstance(children[1][1], nn.BatchNorm2d | nn.SyncBatchNorm):
            (cn, conv), (bn_name, bn) = children[:2]
            if len(children) == 2 or _is_relu(children[2][1]):
                return _conv_bn(cn, conv, bn_name, bn, relu=len(children) == 3)
        return "not a known conv-BN pattern (a Sequential of other layers)"
    if _forward_is(module, _ours("ConvBNAct")):
        act = module.act
        if not (_is_relu(act) or _is_identity(act)):
            return f"activation {type(act).__name__} is not ReLU"
        return _conv_bn("conv", module.conv, "bn", module.bn, relu=_is_relu(act))
    if _forward_is(module, _optional_class("timm.layers.conv_bn_act", "ConvNormAct")):
        if not _is_identity(getattr(module, "aa", None)):
            return "anti-aliasing layer after the conv"
        bn = module.bn
        relu = _timm_bn_relu(bn) if hasattr(bn, "act") else False
        if relu is None:
            return "BatchNormAct2d's activation is not ReLU/identity or it has dropout"
        return _conv_bn("conv", module.conv, "bn", bn, relu=relu, bn_may_act=True)
    return "not a known conv-BN pattern"


def _check_se_convs(fc1, fc2):
    for fc in (fc1, fc2):
        if not isinstance(fc, nn.Conv2d) or type(fc).forward is not nn.Conv2d.forward:
            return f"SE layer {type(fc).__name__} is not an nn.Conv2d"
        if tuple(fc.kernel_size) != (1, 1) or tuple(fc.stride) != (1, 1) or fc.groups != 1 or fc.bias is None:
            return "SE convs must be 1x1, stride 1, ungrouped, with bias"
        if isinstance(fc.padding, str) or tuple(fc.padding) != (0, 0):
            return "SE convs must be unpadded"
    if fc1.out_channels != fc2.in_channels or fc2.out_channels != fc1.in_channels:
        return "SE convs' widths do not chain"
    return None


def match_squeeze_excite(module):
    """x * sigmoid(fc2(relu(fc1(mean_hw(x)))))."""
    if _forward_is(module, _ours("SqueezeExcite")):
        return _check_se_convs(module.reduce, module.expand) or SEMatch("reduce", "expand")
    tv_se = _optional_class("torchvision.ops.misc", "SqueezeExcitation")
    if _forward_is(module, tv_se):
        pool = module.avgpool
        if not (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))):
            return "SE pooling is not a global average"
        if not (_is_relu(module.activation) and _is_sigmoid(module.scale_activation)):
            return "SE activations are not ReLU and Sigmoid"
        return _check_se_convs(module.fc1, module.fc2) or SEMatch("fc1", "fc2")
    if _forward_is(module, _optional_class("timm.layers.squeeze_excite", "SEModule")):
        if getattr(module, "add_maxpool", False) or not _is_identity(module.bn):
            return "SE with max-pooling or a norm layer"
        if not (_is_relu(module.act) and _is_sigmoid(module.gate)):
            return "SE activations are not ReLU and Sigmoid"
        return _check_se_convs(module.fc1, module.fc2) or SEMatch("fc1", "fc2")
    return "not a known squeeze-excite pattern"


def _match_parts(block, paths):
    """Matches each role's layer: returns role -> match, or the first reason a part does not fit."""
    matches = {}
    for role, path in paths.items():
        sub = block.get_submodule(path)
        if role == "se":
            found = match_squeeze_excite(sub)
        else:
            found = match_conv_bn_act(sub)
            if isinstance(found, ConvBNMatch) and found.relu != (role in ("a", "b")):
                found = "ReLU where the block has none, or the reverse"
        if isinstance(found, str):
            return f"{path}: {found}"
        matches[role] = found
    return matches


def _check_widths(block, paths, matches, shortcut):
    convs = {role: block.get_submodule(f"{paths[role]}.{m.conv}")
             for role, m in matches.items() if isinstance(m, ConvBNMatch)}
    chain = [convs["a"], convs["b"], convs["c"]]
    if any(x.out_channels != y.in_channels for x, y in zip(chain, chain[1:])):
        return "a, b, c widths do not chain"
    if shortcut == "identity" and (convs["a"].in_channels != convs["c"].out_channels or convs["b"].stride[0] != 1):
        return "identity shortcut but the block changes width or resolution"
    if shortcut == "proj" and (convs["proj"].in_channels != convs["a"].in_channels
                               or convs["proj"].out_channels != convs["c"].out_channels
                               or convs["proj"].stride[0] != convs["b"].stride[0]):
        return "projection shortcut does not match the block's input/output"
    return None


def _block(block, paths, shortcut, final_relu):
    matches = _match_parts(block, paths)
    if isinstance(matches, str):
        return matches
    return _check_widths(block, paths, matches, shortcut) or BlockMatch(dict(paths), shortcut, final_relu)


def match_bottleneck(module):
    """Residual bottleneck block: relu(c(se(b(a(x)))) + shortcut(x))."""
    if _forward_is(module, _ours("ResBottleneckBlock")):
        if not _is_relu(module.act):
            return "final activation is not ReLU"
        paths = {"a": "a", "b": "b", "c": "c"}
        if module.se is not None:
            paths["se"] = "se"
        if module.proj is not None:
            paths["proj"] = "proj"
        return _block(module, paths, "proj" if module.proj is not None else "identity", True)
    if _forward_is(module, _optional_class("torchvision.models.regnet", "ResBottleneckBlock")):
        f = module.f
        if not _forward_is(f, nn.Sequential):
            return "transform .f is not a Sequential"
        names = [n for n, _ in f.named_children()]
        if names not in (["a", "b", "c"], ["a", "b", "se", "c"]):
            return f"transform .f has layers {names}, expected a, b, [se,] c"
        if not _is_relu(module.activation):
            return "final activation is not ReLU"
        paths = {n: f"f.{n}" for n in names}
        if module.proj is not None:
            paths["proj"] = "proj"
        return _block(module, paths, "proj" if module.proj is not None else "identity", True)
    if _forward_is(module, _optional_class("timm.models.regnet", "Bottleneck")):
        if not _is_identity(module.drop_path):
            return "drop_path is active (stochastic depth is not fused)"
        if not (_is_relu(module.act3) or _is_identity(module.act3)):
            return "final activation is not ReLU/identity"
        paths = {"a": "conv1", "b": "conv2", "c": "conv3"}
        if not _is_identity(module.se):
            paths["se"] = "se"
        ds = module.downsample
        shortcut = "none" if ds is None else ("identity" if _is_identity(ds) else "proj")
        if shortcut == "proj":
            paths["proj"] = "downsample"
        return _block(module, paths, shortcut, _is_relu(module.act3))
    return "not a known bottleneck block"


def match_linear(module):
    """A plain nn.Linear (the classifier): the same function, run through a packed weight."""
    if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
        return LinearMatch()
    return "not a known linear layer"


def _is_global_avg_pool(module):
    return type(module) is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1))


def match_head(module):
    """A classifier head that is a global average pool, then a plain nn.Linear `fc`: ours (Head)
    and timm's ClassifierHead (average pooling, flattened, no conv classifier)."""
    ours = _ours("Head")
    if _forward_is(module, ours):
        if not _is_global_avg_pool(module.pool):
            return "head pooling is not a global average"
    elif _forward_is(module, _optional_class("timm.layers.classifier", "ClassifierHead")):
        pool = module.global_pool
        if not (_forward_is(pool, _optional_class("timm.layers.adaptive_avgmax_pool", "SelectAdaptivePool2d"))
                and _is_global_avg_pool(pool.pool) and type(pool.flatten) is nn.Flatten
                and pool.flatten.start_dim == 1 and pool.flatten.end_dim == -1):
            return "head pooling is not a flattened global average"
        if module.use_conv or not _is_identity(module.flatten) \
                or not (_is_identity(module.drop) or type(module.drop) is nn.Dropout):
            return "head has a conv classifier, a final flatten or an unknown dropout"
    else:
        return "not a known classifier head"
    if isinstance(match_linear(module.fc), str):
        return "head classifier is not a plain nn.Linear"
    return HeadMatch()
