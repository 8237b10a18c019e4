"""What architecture a state_dict in our layout describes, and strict loading into our models.

A state_dict's shapes give every stage's depth, width, inner width, group width and SE width, so
weights can be checked against a model (or a model built for them) before anything is loaded,
and a mismatch is reported as "stage s4: width 400 in the torchvision weights, 384 in the model"
rather than as a shape error deep inside load_state_dict.
"""
import re
from collections import namedtuple
from itertools import chain

import torch
from torch import nn

from .interchange_keys import key_in_layout
from .spec import AnyNetSpec
from .zoo import STANDARD_MODELS, regnet_spec

StageShape = namedtuple("StageShape", "depth width inner_width group_width se_width")
StageShape.__doc__ = "A stage as its first block's tensors show it (se_width 0 without SE)."

_BLOCK_KEY = re.compile(r"^s(\d+)\.b(\d+)\.")


def key_name(key, layout="ours"):
    """One of our keys for a message about a state_dict converted from `layout`: its name there,
    with ours beside it where they differ ("'fc.weight' (ours: 'head.fc.weight')")."""
    theirs = key_in_layout(key, layout)
    return repr(theirs) if theirs == key else f"{theirs!r} (ours: {key!r})"


def _shape(state_dict, key, what, layout="ours"):
    if key not in state_dict:
        raise ValueError(f"state_dict: missing {key_name(key, layout)}, needed for the {what}")
    return tuple(state_dict[key].shape)


def stage_shapes(state_dict, layout="ours"):
    """One StageShape per stage of a state_dict in our layout (stages s1..sN, blocks b1..bD),
    converted from `layout` (the names its errors give keys)."""
    blocks = {}
    for key in state_dict:
        m = _BLOCK_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if sorted(blocks) != list(range(1, len(blocks) + 1)) or not blocks:
        found = [f"s{s}" for s in sorted(blocks)]
        raise ValueError(f"state_dict: expected stages s1..sN, found {found}")
    shapes = []
    for stage in range(1, len(blocks) + 1):
        found = sorted(blocks[stage])
        if found != list(range(1, len(found) + 1)):
            raise ValueError(f"state_dict: stage s{stage} has blocks {['b%d' % b for b in found]}, "
                             f"expected b1..b{len(found)}")
        p = f"s{stage}.b1."
        width = _shape(state_dict, p + "c.conv.weight", f"width of stage s{stage}", layout)[0]
        inner = _shape(state_dict, p + "a.conv.weight", f"inner width of stage s{stage}", layout)[0]
        group = _shape(state_dict, p + "b.conv.weight", f"group width of stage s{stage}", layout)[1]
        se_key = p + "se.reduce.weight"
        se = state_dict[se_key].shape[0] if se_key in state_dict else 0
        shapes.append(StageShape(len(found), width, inner, group, se))
    return shapes


def spec_from_state_dict(state_dict, *, strides=None, name="", layout="ours"):
    """The AnyNetSpec whose model has exactly this state_dict's keys and shapes (our layout,
    converted from `layout`: the naming of the keys its errors name).

    Strides are not stored in weights: pass them per stage (default 2 everywhere, as in every
    standard RegNet). The SE ratio is read from the first block (its SE width over its input
    width, the stem width); blocks whose SE width does not follow from that ratio are reported
    by check_architecture."""
    stem = _shape(state_dict, "stem.conv.weight", "stem", layout)
    fc = _shape(state_dict, "head.fc.weight", "classifier", layout)
    stages = stage_shapes(state_dict, layout)
    se_widths = {s.se_width > 0 for s in stages}
    if len(se_widths) > 1:
        raise ValueError("state_dict: some stages have squeeze-excite and others do not")
    se_ratio = stages[0].se_width / stem[0] if stages[0].se_width else 0.0
    return AnyNetSpec(depths=[s.depth for s in stages], widths=[s.width for s in stages],
                      group_widths=[s.group_width for s in stages],
                      bottleneck_multipliers=[s.inner_width / s.width for s in stages],
                      strides=strides, se_ratio=se_ratio, stem_width=stem[0],
                      in_channels=stem[1], num_classes=fc[0], name=name)


def architecture_differences(expected, found, source="the weights", target="the model", layout="ours"):
    """Human-readable differences between two state_dicts' architectures (our layout; `found`
    converted from `layout`, whose names the keys are given in)."""
    a, b = stage_shapes(found, layout), stage_shapes(expected)
    out = []
    if len(a) != len(b):
        out.append(f"{len(a)} stages in {source}, {len(b)} in {target}")
    for i, (sa, sb) in enumerate(zip(a, b)):
        for field in StageShape._fields:
            va, vb = getattr(sa, field), getattr(sb, field)
            if va != vb:
                label = field.replace("_", " ") if field != "depth" else "depth (blocks)"
                out.append(f"stage s{i + 1}: {label} {va} in {source}, {vb} in {target}")
    for key in ("stem.conv.weight", "head.fc.weight"):
        if key in expected and key in found and expected[key].shape != found[key].shape:
            out.append(f"{key_name(key, layout)}: shape {tuple(found[key].shape)} in {source}, "
                       f"{tuple(expected[key].shape)} in {target}")
    return out


def state_dict_fits(expected, found, source="the weights", target="the model", layout="ours"):
    """Raises ValueError unless state_dict `found` has exactly the keys and shapes of state_dict
    `expected` (both in our layout).

    The message names the stage and the width that differ when the architectures differ, and
    lists missing/unexpected keys or mismatched shapes otherwise, each key as it is named in
    `layout`, the layout `found` was converted from (the user's file)."""
    differences = architecture_differences(expected, found, source, target, layout)
    if differences:
        raise ValueError(f"architecture mismatch between {source} and {target}: "
                         + "; ".join(differences))
    name = lambda k: repr(key_in_layout(k, layout))  # noqa: E731
    missing = [name(k) for k in expected if k not in found]
    unexpected = [name(k) for k in found if k not in expected]
    shapes = [f"{name(k)}: {tuple(found[k].shape)} in {source}, {tuple(v.shape)} in {target}"
              for k, v in expected.items() if k in found and found[k].shape != v.shape]
    problems = [f"{label}{', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                for label, items in (("missing keys ", missing), ("unexpected keys ", unexpected),
                                     ("shape mismatches: ", shapes)) if items]
    if problems:
        raise ValueError(f"{source} do not fit {target}: " + "; ".join(problems))


def check_architecture(model, state_dict, source="the weights", layout="ours"):
    """Raises ValueError unless `state_dict` (our layout, converted from `layout`) fits `model`
    exactly; see state_dict_fits."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    state_dict_fits(model.state_dict(), state_dict, source, "the model", layout)


def device_and_dtype(state_dict):
    """Where a model built for `state_dict` (our layout) should live: its stem conv's device and
    dtype."""
    weight = state_dict.get("stem.conv.weight")
    if weight is None:
        raise ValueError("state_dict: missing 'stem.conv.weight'")
    return dict(device=weight.device, dtype=weight.dtype)


def load_checked(model, state_dict, source="the weights"):
    """check_architecture, then a strict load_state_dict. Returns the model."""
    check_architecture(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    return model


def match_standard(spec):
    """(our name, rounding) of the standard model whose architecture is `spec` (the pycls
    rounding first), or (None, None)."""
    for label in STANDARD_MODELS:
        for rounding in ("pycls", "torchvision"):
            if regnet_spec(label, rounding=rounding, num_classes=spec.num_classes) == spec:
                return label, rounding
    return None, None


def build_on_meta(factory):
    """Builds a module on the meta device: no memory, no random initialisation to pay for, since
    every tensor is about to be replaced by assign_weights."""
    with torch.device("meta"):
        return factory()


def assign_weights(module, state_dict):
    """Loads a state_dict that already fits `module` (strict) by taking copies of its tensors as
    the module's own (so a module built on the meta device becomes real). Returns the module."""
    module.load_state_dict({k: v.detach().clone() for k, v in state_dict.items()},
                           strict=True, assign=True)
    left = [n for n, t in chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors not covered by the state_dict: {left[:8]}")
    return module
