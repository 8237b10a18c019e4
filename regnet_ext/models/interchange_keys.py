"""State_dict key mapping between our RegNets and torchvision's, timm's and pycls's.

Pure functions on state_dicts: no model is built, tensors are passed through untouched (except
the stem conv when its input channels are reordered for pycls's BGR convention), and the input
dict is never modified. Every key must be known: an unknown key raises a ValueError rather than
being dropped, so a converted state_dict is complete or the conversion fails.

Our layout (see layers.py)::

    stem.conv.weight, stem.bn.{weight,bias,running_mean,running_var,num_batches_tracked}
    s<i>.b<j>.{a,b,c,proj}.conv.weight, s<i>.b<j>.{a,b,c,proj}.bn.*
    s<i>.b<j>.se.{reduce,expand}.{weight,bias}
    head.fc.{weight,bias}
"""
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import torch

# Our module paths inside a block; each layout maps them to its own paths.
BLOCK_LAYERS = ("a.conv", "a.bn", "b.conv", "b.bn", "se.reduce", "se.expand",
                "c.conv", "c.bn", "proj.conv", "proj.bn")
STEM_LAYERS = ("stem.conv", "stem.bn")
HEAD_LAYERS = ("head.fc",)
STEM_CONV_WEIGHT = "stem.conv.weight"

_BN_LEAVES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
_CONV_LEAVES = frozenset({"weight"})
_BIASED_LEAVES = frozenset({"weight", "bias"})


def _leaves(our_layer):
    """The tensor names a layer of ours owns: BN stats, conv weight, or weight+bias."""
    if our_layer.endswith(".bn"):
        return _BN_LEAVES
    if our_layer.startswith("se.") or our_layer == "head.fc":
        return _BIASED_LEAVES
    return _CONV_LEAVES


@dataclass(frozen=True)
class KeyLayout:
    """How one implementation names the layers of a RegNet.

    ``block_prefix(stage, block)`` renders a block's prefix (1-based indices); ``parse_block(key)``
    splits a block's key into (stage, block, rest of the key), or returns None."""

    name: str
    stem: dict
    head: dict
    block: dict
    block_prefix: Callable
    parse_block: Callable


_S_B_KEY = re.compile(r"^s(\d+)\.b(\d+)\.(.+)$")
# torchvision: trunk_output.block<i>.block<i>-<j-1> (stage number twice, blocks counted from 0).
_TORCHVISION_BLOCK_KEY = re.compile(r"^trunk_output\.block(\d+)\.block(\d+)-(\d+)\.(.+)$")


def _s_b_prefix(stage, block):
    return f"s{stage}.b{block}"


def _parse_s_b(key):
    m = _S_B_KEY.match(key)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else None


def _torchvision_prefix(stage, block):
    return f"trunk_output.block{stage}.block{stage}-{block - 1}"


def _parse_torchvision(key):
    m = _TORCHVISION_BLOCK_KEY.match(key)
    if not m or m.group(1) != m.group(2):
        return None
    return int(m.group(1)), int(m.group(3)) + 1, m.group(4)


OURS = KeyLayout(
    name="ours",
    stem={layer: layer for layer in STEM_LAYERS},
    head={layer: layer for layer in HEAD_LAYERS},
    block={layer: layer for layer in BLOCK_LAYERS},
    block_prefix=_s_b_prefix, parse_block=_parse_s_b)

TORCHVISION = KeyLayout(
    name="torchvision",
    stem={"stem.conv": "stem.0", "stem.bn": "stem.1"},
    head={"head.fc": "fc"},
    block={"a.conv": "f.a.0", "a.bn": "f.a.1", "b.conv": "f.b.0", "b.bn": "f.b.1",
           "se.reduce": "f.se.fc1", "se.expand": "f.se.fc2", "c.conv": "f.c.0", "c.bn": "f.c.1",
           "proj.conv": "proj.0", "proj.bn": "proj.1"},
    block_prefix=_torchvision_prefix, parse_block=_parse_torchvision)

TIMM = KeyLayout(
    name="timm",
    stem={"stem.conv": "stem.conv", "stem.bn": "stem.bn"},
    head={"head.fc": "head.fc"},
    block={"a.conv": "conv1.conv", "a.bn": "conv1.bn", "b.conv": "conv2.conv", "b.bn": "conv2.bn",
           "se.reduce": "se.fc1", "se.expand": "se.fc2", "c.conv": "conv3.conv", "c.bn": "conv3.bn",
           "proj.conv": "downsample.conv", "proj.bn": "downsample.bn"},
    block_prefix=_s_b_prefix, parse_block=_parse_s_b)

# pycls's own checkpoints (checkpoint["model_state"]); the same names since pycls's first release.
PYCLS = KeyLayout(
    name="pycls",
    stem={"stem.conv": "stem.conv", "stem.bn": "stem.bn"},
    head={"head.fc": "head.fc"},
    block={"a.conv": "f.a", "a.bn": "f.a_bn", "b.conv": "f.b", "b.bn": "f.b_bn",
           "se.reduce": "f.se.f_ex.0", "se.expand": "f.se.f_ex.2", "c.conv": "f.c",
           "c.bn": "f.c_bn", "proj.conv": "proj", "proj.bn": "bn"},
    block_prefix=_s_b_prefix, parse_block=_parse_s_b)

LAYOUTS = {layout.name: layout for layout in (OURS, TORCHVISION, TIMM, PYCLS)}


def _check_state_dict(state_dict, arg="state_dict"):
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{arg}: expected a state_dict (a mapping of names to tensors), "
                        f"got {type(state_dict).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise TypeError(f"{arg}: expected str keys and tensor values; offending keys: {bad[:5]}")


def _to_our_key(key, layout, outer, inner):
    """`key`'s name in our layout, or None if it is not a key of a RegNet in `layout`.
    `outer` and `inner` map the layout's stem/head and in-block layer paths to ours."""
    parsed = layout.parse_block(key)
    if parsed is not None:
        stage, block, rest = parsed
        if "." not in rest or stage < 1 or block < 1:
            return None
        their_layer, leaf = rest.rsplit(".", 1)
        ours, prefix = inner.get(their_layer), f"{_s_b_prefix(stage, block)}."
    elif "." in key:
        their_layer, leaf = key.rsplit(".", 1)
        ours, prefix = outer.get(their_layer), ""
    else:
        return None
    if ours is None or leaf not in _leaves(ours):
        return None
    return f"{prefix}{ours}.{leaf}"


def key_in_layout(our_key, layout):
    """One of our keys as it is named in `layout` ("ours", "torchvision", "timm" or "pycls"), for
    messages about a user's file; the key itself where it has no counterpart there."""
    try:
        return _from_our_key(our_key, LAYOUTS[layout])
    except (KeyError, ValueError, TypeError):
        return our_key


def _reverse(mapping):
    return {v: k for k, v in mapping.items()}


def _from_our_key(our_key, layout):
    """Renders one of our keys (as _to_our_key returns them) in `layout`."""
    path, leaf = our_key.rsplit(".", 1)
    if path in layout.stem:
        return f"{layout.stem[path]}.{leaf}"
    if path in layout.head:
        return f"{layout.head[path]}.{leaf}"
    stage, block, rest = OURS.parse_block(our_key)
    return f"{layout.block_prefix(stage, block)}.{layout.block[rest.rsplit('.', 1)[0]]}.{leaf}"


def convert_keys(state_dict, source, target):
    """Renames every key of `state_dict` from layout `source` to layout `target`
    ("ours", "torchvision", "timm" or "pycls"). Returns a new OrderedDict holding the same tensors.

    Raises ValueError listing the keys that are not part of a `source` RegNet's state_dict."""
    for arg, value in (("source", source), ("target", target)):
        if value not in LAYOUTS:
            raise ValueError(f"{arg}: expected one of {sorted(LAYOUTS)}, got {value!r}")
    _check_state_dict(state_dict)
    src, dst = LAYOUTS[source], LAYOUTS[target]
    outer, inner = {**_reverse(src.stem), **_reverse(src.head)}, _reverse(src.block)
    out, unknown = OrderedDict(), []
    for key, tensor in state_dict.items():
        our_key = _to_our_key(key, src, outer, inner)
        if our_key is None:
            unknown.append(key)
            continue
        new_key = _from_our_key(our_key, dst)
        if new_key in out:
            raise ValueError(f"state_dict: two keys map to {new_key!r} (one is {key!r})")
        out[new_key] = tensor
    if unknown:
        more = f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""
        raise ValueError(f"state_dict: {len(unknown)} key(s) are not keys of a RegNet in the "
                         f"{source} layout: {unknown[:8]}{more}")
    return out


def _swap_stem_channels(state_dict, arg):
    """Reverses the stem conv's input channels: BGR <-> RGB. Returns a new dict."""
    if STEM_CONV_WEIGHT not in state_dict:
        raise ValueError(f"{arg}: no {STEM_CONV_WEIGHT!r} to reorder between BGR and RGB")
    weight = state_dict[STEM_CONV_WEIGHT]
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"{arg}: BGR<->RGB needs a 3-channel stem conv, got "
                         f"{STEM_CONV_WEIGHT} of shape {tuple(weight.shape)}")
    out = OrderedDict(state_dict)
    out[STEM_CONV_WEIGHT] = weight.flip(1)
    return out


def from_torchvision(state_dict):
    """A torchvision RegNet's state_dict -> ours. Both take RGB input: no channel change."""
    return convert_keys(state_dict, "torchvision", "ours")


def to_torchvision(state_dict):
    """Our state_dict -> a torchvision RegNet's."""
    return convert_keys(state_dict, "ours", "torchvision")


def from_timm(state_dict):
    """A timm RegNet's state_dict (regnetx_*/regnety_*, the plain post-activation models) -> ours.
    timm already flipped pycls's weights to RGB, like ours: no channel change."""
    return convert_keys(state_dict, "timm", "ours")


def to_timm(state_dict):
    """Our state_dict -> a timm RegNet's."""
    return convert_keys(state_dict, "ours", "timm")


def from_pycls(state_dict, *, bgr_to_rgb=True):
    """A pycls RegNet's state_dict, or a whole pycls checkpoint (its "model_state" is used) -> ours.

    pycls's models were trained on BGR input; ours take RGB (like torchvision and timm), so by
    default the stem conv's input channels are reversed. Pass ``bgr_to_rgb=False`` to keep
    pycls's weights as they are (the model then expects BGR input)."""
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("model_state"), Mapping):
        state_dict = state_dict["model_state"]
    out = convert_keys(state_dict, "pycls", "ours")
    return _swap_stem_channels(out, "state_dict") if bgr_to_rgb else out


def to_pycls(state_dict, *, rgb_to_bgr=True):
    """Our state_dict -> pycls's layout (load it into pycls's model, or save it as a checkpoint's
    "model_state"). By default the stem conv's input channels are reversed so the pycls model takes
    BGR input, as pycls's data loader provides; ``rgb_to_bgr=False`` keeps RGB."""
    out = convert_keys(state_dict, "ours", "pycls")
    return _swap_stem_channels(out, "state_dict") if rgb_to_bgr else out
