"""Analytic complexity of an AnyNet/RegNet by pycls's conventions, without building the model.

flops are multiply-adds. A conv counts k*k*C_in*C_out*h'*w'/groups flops (plus C_out for a bias),
k*k*C_in*C_out/groups (+ C_out) params and C_out*h'*w' acts, at its *output* size. BN counts 2*C
params; ReLU, pooling, the residual add and SE's sigmoid/scale count nothing. SE's two 1x1 convs
run on the pooled 1x1 map, so they are counted at 1x1 with their biases. The classifier counts
C_in*C_out + C_out flops and params and C_out acts.
"""
from collections import namedtuple

from .spec import AnyNetSpec, BlockSpec

Complexity = namedtuple("Complexity", "flops params acts")
Complexity.__doc__ = "flops (multiply-adds), params and acts (output elements) for one image."


def output_size(h, w, stride):
    """Spatial size after an odd-k conv with padding (k-1)/2 and the given stride."""
    return (h - 1) // stride + 1, (w - 1) // stride + 1


def _conv(w_in, w_out, k, h_out, w_out_, groups=1, bias=False):
    spatial = h_out * w_out_
    flops = k * k * w_in * w_out * spatial // groups + (w_out if bias else 0)
    params = k * k * w_in * w_out // groups + (w_out if bias else 0)
    return flops, params, w_out * spatial


def block_complexity(block_spec: BlockSpec, h, w):
    """Complexity of one residual bottleneck block whose input is h x w."""
    b = block_spec
    inner, groups = b.inner_width, b.groups
    ho, wo = output_size(h, w, b.stride)
    # 1x1 a runs at the input size; the grouped 3x3 b carries the stride.
    fa, pa, aa = _conv(b.w_in, inner, 1, h, w)
    fb, pb, ab = _conv(inner, inner, 3, ho, wo, groups=groups)
    fc, pc, ac = _conv(inner, b.w_out, 1, ho, wo)
    flops, params, acts = fa + fb + fc, pa + pb + pc, aa + ab + ac
    params += 2 * (inner + inner + b.w_out)  # three BNs
    w_se = b.se_width
    if w_se:
        for c_in, c_out in ((inner, w_se), (w_se, inner)):
            f, p, a = _conv(c_in, c_out, 1, 1, 1, bias=True)
            flops, params, acts = flops + f, params + p, acts + a
    if b.has_projection:
        f, p, a = _conv(b.w_in, b.w_out, 1, ho, wo)
        flops, params, acts = flops + f, params + p + 2 * b.w_out, acts + a
    return Complexity(flops, params, acts)


def stem_complexity(spec: AnyNetSpec, h, w):
    ho, wo = output_size(h, w, 2)
    f, p, a = _conv(spec.in_channels, spec.stem_width, 3, ho, wo)
    return Complexity(f, p + 2 * spec.stem_width, a)


def head_complexity(spec: AnyNetSpec):
    c_in, c_out = spec.widths[-1], spec.num_classes
    return Complexity(c_in * c_out + c_out, c_in * c_out + c_out, c_out)


def _resolution(resolution):
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        h = w = resolution
    elif isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        h, w = resolution
    else:
        raise ValueError(f"resolution: expected an int or an (h, w) pair, got {resolution!r}")
    # bool is an int to Python, but (True, True) is no resolution (a lone True is refused above)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (h, w)):
        raise ValueError(f"resolution: expected positive integers, got {resolution!r}")
    return h, w


def per_block_complexity(spec: AnyNetSpec, resolution=224):
    """Yields (block_spec, (h_in, w_in), Complexity) for every block, in order."""
    h, w = output_size(*_resolution(resolution), 2)
    for block in spec.blocks():
        yield block, (h, w), block_complexity(block, h, w)
        h, w = output_size(h, w, block.stride)


def complexity(spec: AnyNetSpec, resolution=224):
    """Total Complexity of the model for one image of size ``resolution`` (int or (h, w))."""
    if not isinstance(spec, AnyNetSpec):
        raise TypeError(f"spec: expected an AnyNetSpec, got {type(spec).__name__}")
    h, w = _resolution(resolution)
    flops, params, acts = stem_complexity(spec, h, w)
    h, w = output_size(h, w, 2)
    for first, rest, depth in spec.stage_blocks():  # two block evaluations per stage
        f, p, a = block_complexity(first, h, w)
        flops, params, acts = flops + f, params + p, acts + a
        h, w = output_size(h, w, first.stride)
        if rest is not None:
            f, p, a = block_complexity(rest, h, w)
            n = depth - 1
            flops, params, acts = flops + n * f, params + n * p, acts + n * a
    f, p, a = head_complexity(spec)
    return Complexity(flops + f, params + p, acts + a)
