"""The width/depth generator against the reference widths, an independent pure-Python
re-derivation, torchvision's own generator, and its parameter checks."""
import json
import math
import random
from pathlib import Path

import pytest

from regnet_ext.models import STANDARD_MODELS, generate_regnet
from regnet_ext.models.generator import (adjust_block_compatibility, quantized_widths,
                                         split_stages)

GOLDEN = json.loads((Path(__file__).parent / "data" / "regnet_golden.json").read_text())
GOLDEN_MODELS = {m["name"]: m for m in GOLDEN["models"]}


def test_golden_table_covers_every_standard_model():
    assert list(GOLDEN_MODELS) == list(STANDARD_MODELS)
    for name, params in STANDARD_MODELS.items():
        g = GOLDEN_MODELS[name]
        assert (g["w0"], g["wa"], g["wm"], g["depth"], g["group_width"], g["se_ratio"]) == params


@pytest.mark.parametrize("name", list(STANDARD_MODELS))
def test_standard_models_match_reference_stages(name):
    p, g = STANDARD_MODELS[name], GOLDEN_MODELS[name]
    design = generate_regnet(p.w0, p.wa, p.wm, p.depth, p.group_width)
    assert list(design.stage_depths) == g["depths"]
    assert list(design.stage_widths) == g["widths"]
    assert list(design.group_widths) == g["group_widths"]
    assert design.num_stages == design.total_stages == 4
    assert sum(design.stage_depths) == p.depth
    # Per-block record: u_j exactly w0 + wa*j in float64, and stages are the runs of w_j.
    assert design.continuous_widths == tuple(p.w0 + p.wa * j for j in range(p.depth))
    assert len(design.exponents) == len(design.block_widths) == p.depth
    assert split_stages(design.block_widths)[1] == list(design.stage_depths)
    assert split_stages(design.widths_per_block) == (g["widths"], g["depths"])
    assert len(design.group_widths_per_block) == p.depth
    assert sorted(set(design.group_widths_per_block)) == sorted(set(g["group_widths"]))


def _pycls_by_hand(w0, wa, wm, depth, g, bm):
    """The generator's rules re-derived with math.log and Python's round (half to even)."""
    u = [w0 + wa * j for j in range(depth)]
    k = [round(math.log(x / w0) / math.log(wm)) for x in u]
    w = [8 * round(w0 * wm ** e / 8) for e in k]
    widths, depths = [], []
    for x in w:
        if widths and widths[-1] == x:
            depths[-1] += 1
        else:
            widths.append(x)
            depths.append(1)
    out_w, out_g = [], []
    for x in widths:
        v = int(max(1, x * bm))
        gg = int(min(g, v))
        m = math.lcm(gg, int(bm)) if bm > 1 else gg
        v = max(m, int(round(v / m) * m))
        out_w.append(int(v / bm))
        out_g.append(gg)
    return depths, out_w, out_g, max(k) + 1


def _random_params(rng):
    # pycls's RegNet sampler's ranges, plus bottleneck multipliers it allows.
    return dict(depth=rng.randint(12, 28), w0=8 * rng.randint(1, 32),
                wa=round(math.exp(rng.uniform(math.log(8), math.log(256))), 1),
                wm=round(math.exp(rng.uniform(math.log(2), math.log(3))), 3),
                group_width=rng.choice([1, 2, 4, 8, 16, 24, 32, 48, 64]),
                bottleneck_multiplier=rng.choice([1.0, 1.0, 0.5, 0.25, 2.0, 4.0]))


def test_random_designs_match_independent_derivation():
    rng = random.Random(1234)
    for _ in range(400):
        p = _random_params(rng)
        d = generate_regnet(p["w0"], p["wa"], p["wm"], p["depth"], p["group_width"],
                            p["bottleneck_multiplier"])
        depths, widths, gws, total = _pycls_by_hand(p["w0"], p["wa"], p["wm"], p["depth"],
                                                    p["group_width"], p["bottleneck_multiplier"])
        assert (list(d.stage_depths), list(d.stage_widths), list(d.group_widths),
                d.total_stages) == (depths, widths, gws, total), p
        # Compatibility: every stage's inner width is a multiple of its group width.
        for w, g in zip(d.stage_widths, d.group_widths):
            assert round(w * p["bottleneck_multiplier"]) % g == 0, p


def test_round_half_to_even_in_compatibility_step():
    # 392 / 16 = 24.5: pycls rounds to even (384), torchvision half up (400). RegNetX-400MF's
    # last stage is exactly this tie.
    assert adjust_block_compatibility([392], [1.0], [16]) == ([384], [16])
    assert adjust_block_compatibility([392], [1.0], [16], rounding="torchvision") == ([400], [16])
    # Group width larger than the width: clipped to the width.
    assert adjust_block_compatibility([24], [1.0], [64]) == ([24], [24])
    # Integer bottleneck multiplier: inner width a multiple of lcm(g, bm).
    assert adjust_block_compatibility([100], [4.0], [6]) == ([99], [6])


def test_torchvision_rounding_gives_torchvision_architectures():
    for name, tv in GOLDEN["torchvision"].items():
        p = STANDARD_MODELS[name]
        d = generate_regnet(p.w0, p.wa, p.wm, p.depth, p.group_width, rounding="torchvision")
        assert (list(d.stage_depths), list(d.stage_widths), list(d.group_widths)) == (
            tv["depths"], tv["widths"], tv["group_widths"]), name
    differs = [n for n, p in STANDARD_MODELS.items()
               if generate_regnet(p.w0, p.wa, p.wm, p.depth, p.group_width).stage_widths
               != generate_regnet(p.w0, p.wa, p.wm, p.depth, p.group_width,
                                  rounding="torchvision").stage_widths]
    # Three of the 14 models torchvision ships, and two (4.0GF) that it does not ship.
    assert differs == ["RegNetX-400MF", "RegNetX-4.0GF", "RegNetY-800MF", "RegNetY-4.0GF",
                       "RegNetY-8.0GF"]


def test_torchvision_rounding_matches_torchvision_generator_on_standard_models():
    regnet_tv = pytest.importorskip("torchvision.models.regnet")
    for name, p in STANDARD_MODELS.items():
        ref = regnet_tv.BlockParams.from_init_params(p.depth, p.w0, p.wa, p.wm, p.group_width)
        d = generate_regnet(p.w0, p.wa, p.wm, p.depth, p.group_width, rounding="torchvision")
        assert (list(d.stage_depths), list(d.stage_widths), list(d.group_widths)) == (
            list(ref.depths), list(ref.widths), list(ref.group_widths)), name


def test_torchvision_rounding_matches_torchvision_generator_on_random_designs():
    regnet_tv = pytest.importorskip("torchvision.models.regnet")
    rng = random.Random(99)
    for _ in range(200):
        p = _random_params(rng)
        p["bottleneck_multiplier"] = 1.0  # torchvision's compatibility step assumes int(w*b)
        ref = regnet_tv.BlockParams.from_init_params(
            p["depth"], p["w0"], p["wa"], p["wm"], p["group_width"], 1.0)
        d = generate_regnet(p["w0"], p["wa"], p["wm"], p["depth"], p["group_width"],
                            rounding="torchvision")
        assert (list(d.stage_depths), list(d.stage_widths), list(d.group_widths)) == (
            list(ref.depths), list(ref.widths), list(ref.group_widths)), p


def test_quantized_widths_are_multiples_of_q():
    u, k, w = quantized_widths(48, 27.89, 2.09, 16)
    assert all(x % 8 == 0 for x in w) and k[0] == 0 and w[0] == 48
    assert k == sorted(k)


@pytest.mark.parametrize("kwargs, param", [
    (dict(w0=20), "w0"), (dict(w0=0), "w0"), (dict(w0=-8), "w0"),
    (dict(wa=-1.0), "wa"), (dict(wa=float("nan")), "wa"),
    (dict(wm=1.0), "wm"), (dict(wm=0.5), "wm"),
    (dict(depth=0), "depth"), (dict(depth=12.5), "depth"),
    (dict(group_width=0), "group_width"), (dict(group_width=8.5), "group_width"),
    (dict(bottleneck_multiplier=0.0), "bottleneck_multiplier"),
    (dict(bottleneck_multiplier=1.5), "bottleneck_multiplier"),
    (dict(rounding="numpy"), "rounding"),
])
def test_bad_parameters_raise_value_error_naming_them(kwargs, param):
    args = dict(w0=48, wa=27.89, wm=2.09, depth=16, group_width=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{param}:"):
        generate_regnet(**args)
