"""The RegNet width/depth generator: a quantized linear function of the block index.

pycls semantics by default (float64, round half to even); ``rounding="torchvision"`` reproduces
torchvision's float32 arithmetic and its half-up group/bottleneck compatibility step (with its extra
group when the result falls below 90% of the width). That gives other architectures for five of the
24 standard models: RegNetX-400MF, RegNetY-800MF and RegNetY-8.0GF among those torchvision ships
(needed to load its weights), and RegNetX-4.0GF and RegNetY-4.0GF, which it does not ship.
"""
import math
from dataclasses import dataclass

import numpy as np

from .spec import AnyNetSpec

ROUNDINGS = ("pycls", "torchvision")
QUANTUM = 8


@dataclass(frozen=True)
class RegNetDesign:
    """Everything the generator decides, per block and per stage."""

    continuous_widths: tuple  # u_j = w0 + wa * j
    exponents: tuple  # k_j
    block_widths: tuple  # quantized w_j, before the compatibility step
    stage_widths: tuple  # after the compatibility step
    stage_depths: tuple
    group_widths: tuple  # per stage, after the compatibility step
    bottleneck_multipliers: tuple
    num_stages: int  # distinct widths
    total_stages: int  # max exponent + 1

    @property
    def widths_per_block(self):
        """Each block's final width (its stage's width after the compatibility step)."""
        return tuple(w for w, d in zip(self.stage_widths, self.stage_depths) for _ in range(d))

    @property
    def group_widths_per_block(self):
        return tuple(g for g, d in zip(self.group_widths, self.stage_depths) for _ in range(d))

    def to_spec(self, *, se_ratio=0.0, num_classes=1000, stem_width=32, in_channels=3, name=""):
        return AnyNetSpec(depths=self.stage_depths, widths=self.stage_widths,
                          group_widths=self.group_widths,
                          bottleneck_multipliers=self.bottleneck_multipliers,
                          se_ratio=se_ratio, num_classes=num_classes, stem_width=stem_width,
                          in_channels=in_channels, name=name)


def _check_params(w0, wa, wm, depth, q):
    if not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth: expected an integer >= 1, got {depth!r}")
    if not isinstance(q, (int, np.integer)) or q < 1:
        raise ValueError(f"q: expected an integer >= 1, got {q!r}")
    if not (w0 > 0 and w0 % q == 0):
        raise ValueError(f"w0: expected a positive multiple of q={q}, got {w0!r}")
    if not wa >= 0:
        raise ValueError(f"wa: expected wa >= 0, got {wa!r}")
    if not wm > 1:
        raise ValueError(f"wm: expected wm > 1, got {wm!r}")


def quantized_widths(w0, wa, wm, depth, q=QUANTUM, rounding="pycls"):
    """Steps 1-3: returns (u, k, w) per block as Python lists."""
    _check_params(w0, wa, wm, depth, q)
    if rounding == "pycls":
        u = np.arange(depth) * wa + w0
        k = np.round(np.log(u / w0) / np.log(wm))
        w = (np.round(w0 * np.power(wm, k) / q).astype(int) * q)
        return u.tolist(), [int(x) for x in k], [int(x) for x in w]
    if rounding == "torchvision":
        import torch  # torchvision computes in float32 torch ops; reproduce them exactly

        # Explicit dtype/device: the caller may be building under torch.device("meta") or with
        # another default dtype; torchvision's builders run under the float32 default.
        u = torch.arange(depth, dtype=torch.float32, device="cpu") * wa + w0
        k = torch.round(torch.log(u / w0) / math.log(wm))
        w = (torch.round(torch.divide(w0 * torch.pow(wm, k), q)) * q).int()
        return [float(x) for x in u.tolist()], [int(x) for x in k.tolist()], w.tolist()
    raise ValueError(f"rounding: expected one of {ROUNDINGS}, got {rounding!r}")


def split_stages(block_widths):
    """Consecutive runs of equal width are stages: returns (stage widths, stage depths)."""
    widths, depths = [], []
    for w in block_widths:
        if widths and widths[-1] == w:
            depths[-1] += 1
        else:
            widths.append(w)
            depths.append(1)
    return widths, depths


def adjust_block_compatibility(widths, bottleneck_multipliers, group_widths, rounding="pycls"):
    """Step 5: make each stage's inner width a multiple of its (possibly reduced) group width.

    Returns (widths, group_widths)."""
    if not len(widths) == len(bottleneck_multipliers) == len(group_widths):
        raise ValueError("widths, bottleneck_multipliers and group_widths must have equal lengths")
    out_w, out_g = [], []
    for w, bm, g in zip(widths, bottleneck_multipliers, group_widths):
        if w <= 0 or bm <= 0 or g <= 0:
            raise ValueError(f"width, bottleneck multiplier and group width must be > 0, "
                             f"got {w}, {bm}, {g}")
        if rounding == "pycls":
            if not (bm < 1 or bm % 1 == 0):
                raise ValueError(f"bottleneck_multiplier: must be < 1 or an integer, got {bm}")
            v = int(max(1, w * bm))
            g = int(min(g, v))
            m = math.lcm(g, int(bm)) if bm > 1 else g
            v = max(m, int(round(v / m) * m))
        elif rounding == "torchvision":
            v = int(w * bm)
            g = int(min(g, v))
            new_v = max(g, int(v + g / 2) // g * g)
            v = new_v + g if new_v < 0.9 * v else new_v
        else:
            raise ValueError(f"rounding: expected one of {ROUNDINGS}, got {rounding!r}")
        out_w.append(int(v / bm))
        out_g.append(g)
    return out_w, out_g


def generate_regnet(w0, wa, wm, depth, group_width, bottleneck_multiplier=1.0, *,
                    q=QUANTUM, rounding="pycls"):
    """Runs the whole generator and returns a RegNetDesign."""
    if not isinstance(group_width, (int, np.integer)) or group_width < 1:
        raise ValueError(f"group_width: expected an integer >= 1, got {group_width!r}")
    if not bottleneck_multiplier > 0:
        raise ValueError(f"bottleneck_multiplier: expected > 0, got {bottleneck_multiplier!r}")
    u, k, w = quantized_widths(w0, wa, wm, depth, q, rounding)
    stage_widths, stage_depths = split_stages(w)
    n = len(stage_widths)
    bms = [float(bottleneck_multiplier)] * n
    widths, gws = adjust_block_compatibility(stage_widths, bms, [group_width] * n, rounding)
    return RegNetDesign(continuous_widths=tuple(u), exponents=tuple(k), block_widths=tuple(w),
                        stage_widths=tuple(widths), stage_depths=tuple(stage_depths),
                        group_widths=tuple(gws), bottleneck_multipliers=tuple(bms),
                        num_stages=n, total_stages=max(k) + 1)
