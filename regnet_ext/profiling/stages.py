"""Finding the stem, stages, blocks and head of a RegNet: ours (``.stem, .s1.., .head``),
torchvision's (``.stem, .trunk_output.block1.., .avgpool, .fc``) and timm's (``.stem, .s1..,
.final_conv, .head``); and reading its AnyNetSpec back from the layers' shapes."""
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..models.spec import AnyNetSpec


@dataclass
class Unit:
    """One piece of the network the profiler times on its own."""

    name: str  # "stem", "s2.b1", "head"
    stage: str  # "stem", "s2", "head"
    run: Callable  # tensor -> tensor
    modules: tuple  # the modules it runs (for parameters and hooks)


def _torchvision_head(model):
    def head(x):
        return model.fc(torch.flatten(model.avgpool(x), 1))
    return head


def _timm_head(model):
    def head(x):
        return model.head(model.final_conv(x))
    return head


def model_stages(model):
    """[(stage name, [(block name, block module)])] and the head as (callable, modules)."""
    if not isinstance(model, nn.Module) or not hasattr(model, "stem"):
        raise ValueError(f"model: expected a RegNet with a .stem (ours, torchvision's or timm's), "
                         f"got {type(model).__name__}")
    if hasattr(model, "trunk_output") and hasattr(model, "fc"):  # torchvision
        stages = list(model.trunk_output.children())
        head = (_torchvision_head(model), (model.avgpool, model.fc))
    elif hasattr(model, "s1") and hasattr(model, "head"):  # ours and timm
        stages = []
        while hasattr(model, f"s{len(stages) + 1}"):
            stages.append(getattr(model, f"s{len(stages) + 1}"))
        if hasattr(model, "final_conv"):
            head = (_timm_head(model), (model.final_conv, model.head))
        else:
            head = (model.head, (model.head,))
    else:
        raise ValueError("model: unrecognised RegNet layout; expected ours (.s1...sN, .head), "
                         "torchvision's (.trunk_output, .fc) or timm's (.s1...sN, .final_conv, .head)")
    named = [(f"s{i + 1}", [(f"s{i + 1}.b{j + 1}", blk) for j, blk in enumerate(stage.children())])
             for i, stage in enumerate(stages)]
    return named, head


def model_units(model):
    """The Units in execution order: stem, every block, head."""
    stages, (head, head_modules) = model_stages(model)
    units = [Unit("stem", "stem", model.stem, (model.stem,))]
    for stage, blocks in stages:
        units.extend(Unit(name, stage, blk, (blk,)) for name, blk in blocks)
    units.append(Unit("head", "head", head, head_modules))
    return units


def _block_convs(block, name):
    """(a, b, c, se_reduce or None, proj or None) convs of a bottleneck block."""
    main, se, proj = [], [], []
    for path, m in block.named_modules():
        if isinstance(m, nn.Conv2d):
            parts = path.split(".")
            if any(p in ("proj", "downsample", "shortcut") for p in parts):
                proj.append(m)
            elif any(p == "se" for p in parts):
                se.append(m)
            else:
                main.append(m)
    if len(main) != 3 or len(proj) > 1 or len(se) not in (0, 2):
        raise ValueError(f"model: block {name} is not a RegNet bottleneck block (found {len(main)} "
                         f"main convs, {len(se)} SE convs, {len(proj)} projection convs)")
    return (*main, se[0] if se else None, proj[0] if proj else None)


def spec_from_model(model):
    """The AnyNetSpec of a RegNet module; ours carries it, torchvision's and timm's are read
    from their convolutions' shapes (and checked block by block)."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, AnyNetSpec):
        return spec
    # timm's RegNetZ/RegNetV look alike block by block, but neither the spec nor the traffic
    # model has their final conv or SiLU activations (or their blocks without a shortcut).
    final_conv = getattr(model, "final_conv", None)
    if isinstance(final_conv, nn.Module) and not isinstance(final_conv, nn.Identity):
        raise ValueError(f"model: {type(model).__name__} has a final conv (timm's RegNetZ?), which "
                         "is not a RegNet of the paper's design space")
    if any(isinstance(m, nn.SiLU) for m in model.modules()):
        raise ValueError(f"model: {type(model).__name__} uses SiLU activations, not a RegNet of the "
                         "paper's design space (ReLU)")
    stages, (_, head_modules) = model_stages(model)
    stem_conv = next((m for m in model.stem.modules() if isinstance(m, nn.Conv2d)), None)
    fc = [m for hm in head_modules for m in hm.modules() if isinstance(m, nn.Linear)]
    if stem_conv is None or not fc:
        raise ValueError("model: could not find the stem conv and the classifier")
    depths, widths, gws, bms, strides, found = [], [], [], [], [], []
    se_ratio = 0.0
    for stage, blocks in stages:
        for i, (name, blk) in enumerate(blocks):
            a, b, c, se, proj = _block_convs(blk, name)
            found.append((a.in_channels, c.out_channels, b.stride[0],
                          b.out_channels // b.groups, se.out_channels if se else 0))
            if i == 0:
                depths.append(len(blocks))
                widths.append(c.out_channels)
                gws.append(b.out_channels // b.groups)
                bms.append(b.out_channels / c.out_channels)
                strides.append(b.stride[0])
                if se is not None and not se_ratio:
                    se_ratio = se.out_channels / a.in_channels
    spec = AnyNetSpec(depths=depths, widths=widths, group_widths=gws, bottleneck_multipliers=bms,
                      strides=strides, se_ratio=se_ratio, stem_width=stem_conv.out_channels,
                      in_channels=stem_conv.in_channels, num_classes=fc[-1].out_features,
                      name=type(model).__name__)
    derived = [(b.w_in, b.w_out, b.stride, b.group_width, b.se_width) for b in spec.blocks()]
    if derived != found:
        bad = next(i for i, (x, y) in enumerate(zip(derived, found)) if x != y)
        raise ValueError(f"model: block {bad} (w_in, w_out, stride, group width, SE width) is "
                         f"{found[bad]}, which no AnyNetSpec reproduces (got {derived[bad]})")
    return spec
