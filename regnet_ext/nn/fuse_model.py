"""fuse(model) / unfuse(model): swap fused modules into a RegNet and back.

    import regnet_ext
    model = torchvision.models.regnet_y_400mf()
    regnet_ext.fuse(model)                      # in place; returns the model
    model, report = regnet_ext.fuse(model, report=True)
    print(report)                               # what was swapped, what was left stock
    regnet_ext.unfuse(model)                    # stock modules again (same Parameters)

Patterns are recognised by structure (see patterns.py): whole bottleneck blocks first (residual
add and final ReLU go into the last conv's epilogue), then conv-BN(-ReLU) layers and SE modules
on their own, classifier heads (average pool + Linear; their Linear is then fused on its own too),
and Linear layers. Anything not recognised stays as it is and is listed in the report.
"""
import dataclasses

import torch
from torch import nn

from . import patterns
from .modules import (FusedConvBNAct, FusedHead, FusedLinear, FusedResBottleneck, FusedSqueezeExcite,
                      _HoldsStock)

# (device type, device index, dtype) -> list of selfcheck.CheckResult, run once per process.
_SELFCHECK_RESULTS = {}


@dataclasses.dataclass
class FuseReport:
    """What fuse() did: `swapped` (path, stock class, fused class), `already_fused` (paths of the
    fused modules the model held before, as after an earlier fuse()), `left_stock` (path, class)
    of conv/BN layers it left unfused, and `notes` (path, why a known block/layer did not match)."""
    swapped: list = dataclasses.field(default_factory=list)
    already_fused: list = dataclasses.field(default_factory=list)
    left_stock: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    def count(self, fused_class):
        return sum(1 for _, _, cls in self.swapped if cls == fused_class)

    def __str__(self):
        kinds = sorted({cls for _, _, cls in self.swapped})
        lines = [f"fuse: swapped {len(self.swapped)} module(s)"
                 + (": " + ", ".join(f"{self.count(k)} {k}" for k in kinds) if kinds else "")]
        lines += [f"  {path:<40} {stock} -> {fused}" for path, stock, fused in self.swapped]
        if self.already_fused:
            lines.append(f"already fused before this call: {len(self.already_fused)} module(s)")
        if self.left_stock:
            lines.append(f"left stock (not a recognised pattern): {len(self.left_stock)} conv/BN layer(s)")
            lines += [f"  {path:<40} {cls}" for path, cls in self.left_stock]
        if self.notes:
            lines.append("not fused, and why:")
            lines += [f"  {path:<40} {why}" for path, why in self.notes]
        return "\n".join(lines)


def build_conv_bn_act(module, match):
    return FusedConvBNAct(getattr(module, match.conv), getattr(module, match.bn), relu=match.relu,
                          conv_name=match.conv, bn_name=match.bn, stock=module)


def build_squeeze_excite(module, match):
    return FusedSqueezeExcite(getattr(module, match.reduce), getattr(module, match.expand),
                              reduce_name=match.reduce, expand_name=match.expand, stock=module)


def build_linear(module, match):
    return FusedLinear(module, stock=module)


def build_head(module, match):
    return FusedHead(module)


def build_bottleneck(module, match):
    parts = {}
    # Children keep the stock order, so parameters() (and optimizer/DDP ordering) is unchanged.
    order = {path: i for i, (path, _) in enumerate(module.named_modules())}
    for role, path in sorted(match.parts.items(), key=lambda item: order[item[1]]):
        stock = module.get_submodule(path)
        if role == "se":
            parts[role] = (path, build_squeeze_excite(stock, patterns.match_squeeze_excite(stock)))
        else:
            parts[role] = (path, build_conv_bn_act(stock, patterns.match_conv_bn_act(stock)))
    return FusedResBottleneck(parts, shortcut=match.shortcut, final_relu=match.final_relu, stock=module)


_BUILDERS = (
    (patterns.match_bottleneck, build_bottleneck),
    (patterns.match_conv_bn_act, build_conv_bn_act),
    (patterns.match_squeeze_excite, build_squeeze_excite),
    (patterns.match_head, build_head),
    (patterns.match_linear, build_linear),
)
_UNKNOWN_PREFIX = "not a known"


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked_module(module):
    """The dotted path ("" for `module` itself) of the first module under `module` that has a
    forward or backward hook, or None. A fused replacement runs none of them."""
    for path, m in module.named_modules():
        if any(getattr(m, name, None) for name in _HOOK_DICTS):
            return path
    return None


def _fuse_one(module, path, report):
    """The fused replacement of `module`, or None (with a note when a known pattern failed)."""
    for match_fn, build in _BUILDERS:
        match = match_fn(module)
        if not isinstance(match, str):
            hooked = _hooked_module(module)
            if hooked is not None:
                where = f"{path}.{hooked}" if path and hooked else (hooked or path or "<model>")
                report.notes.append((path or "<model>", f"{where} has a forward/backward hook, which "
                                     "the fused module would not run"))
                return None
            fused = build(module, match)
            report.swapped.append((path or "<model>", type(module).__name__, type(fused).__name__))
            return fused
        if not match.startswith(_UNKNOWN_PREFIX):
            report.notes.append((path or "<model>", match))
    return None


def _fuse_children(module, prefix, report):
    for name, child in list(module.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, _HoldsStock):
            report.already_fused.append(path)
            continue
        fused = _fuse_one(child, path, report)
        if isinstance(fused, FusedHead):
            _fuse_children(fused, path, report)  # it holds the stock head's fc: fused on its own
        if fused is not None:
            module._modules[name] = fused
        else:
            _fuse_children(child, path, report)


def _stock_conv_bn(model):
    return [(path, type(m).__name__) for path, m in model.named_modules()
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d) and not _inside_fused(model, path)]


def _inside_fused(model, path):
    parts = path.split(".")
    module = model
    for name in parts[:-1]:
        module = getattr(module, name)
        if isinstance(module, _HoldsStock):
            return True
    return isinstance(model, _HoldsStock)


def verify_device(device, dtype):
    """Runs regnet_ext's self-check once per process for (device, dtype); raises RuntimeError
    naming the failing operators if any fails."""
    from .. import selfcheck

    device = torch.device(device)
    key = (device.type, device.index, dtype)
    if key not in _SELFCHECK_RESULTS:
        _SELFCHECK_RESULTS[key] = selfcheck.run(device, [dtype])
    failed = [r for r in _SELFCHECK_RESULTS[key] if not r.passed]
    if failed:
        names = "; ".join(f"{r.op} [{r.dtype}]: error {r.max_error:.3g} > {r.tolerance:.3g} {r.detail}".strip()
                          for r in failed)
        raise RuntimeError(f"fuse(verify=True): the regnet_ext self-check failed on {device} for "
                           f"{dtype}, so nothing was fused: {names}")


def fuse(model, *, verify=False, report=False):
    """Swaps fused modules into `model` in place and returns it.

    Recognises our RegNets (regnet_ext.models), torchvision's regnet_* and timm's regnet* models
    (whole bottleneck blocks, stems, SE modules, the head and its classifier), and conv-BN(-ReLU)
    nn.Sequentials and plain nn.Linear layers in any model; leaves everything else untouched. A
    pattern holding a module with a forward or backward hook stays stock (the fused module would
    not run the hook); its parts may still be fused on their own, and the report says which.
    Parameters, buffers and state_dict keys are unchanged, so an optimizer built before fusing
    keeps working and checkpoints load both ways.

    verify=True first runs the operator self-check for the model's device and dtype (once per
    process) and raises RuntimeError, swapping nothing, if it fails.
    report=True returns (model, FuseReport) instead of the model. If the model itself is a
    recognised pattern, the returned object is its fused replacement.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"fuse: model must be an nn.Module, got {type(model).__name__}")
    if verify:
        first = next(model.parameters(), None)
        if first is not None:
            verify_device(first.device, first.dtype)
    summary = FuseReport()
    if isinstance(model, _HoldsStock):
        summary.already_fused.append("")
    fused_root = None if isinstance(model, _HoldsStock) else _fuse_one(model, "", summary)
    if fused_root is not None:
        model = fused_root
    else:
        _fuse_children(model, "", summary)
    summary.left_stock = _stock_conv_bn(model)
    return (model, summary) if report else model


def unfuse(model):
    """Puts the stock modules back in place of every fused module (same Parameters and buffers,
    train/eval mode kept) and returns the model (the stock module, if the model itself was fused)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"unfuse: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, _HoldsStock):
        return model.stock_module()
    for name, child in list(model.named_children()):
        if isinstance(child, _HoldsStock):
            model._modules[name] = child.stock_module()
        else:
            unfuse(child)
    return model
