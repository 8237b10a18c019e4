"""Analytic complexity against pycls's published figures, an independent counter that runs the
instantiated model with forward hooks, the modules' own parameter counts, and timm/torchvision."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from regnet_ext.models import (STANDARD_MODELS, AnyNet, AnyNetSpec, Complexity, complexity,
                               regnet, regnet_spec)
from regnet_ext.models.complexity import (block_complexity, head_complexity,
                                          per_block_complexity, stem_complexity)

GOLDEN = json.loads((Path(__file__).parent / "data" / "regnet_golden.json").read_text())
GOLDEN_MODELS = {m["name"]: m for m in GOLDEN["models"]}


def measured_complexity(model, h, w, device):
    """Counts flops/acts from the shapes Conv2d and Linear really produce, params from the
    module's tensors. Written from the conventions, independently of regnet_ext's counter."""
    totals = {"flops": 0, "acts": 0}

    def on_conv(m, inputs, out):
        _, c_out, ho, wo = out.shape
        k = m.kernel_size[0] * m.kernel_size[1]
        totals["flops"] += k * (m.in_channels // m.groups) * c_out * ho * wo
        totals["flops"] += c_out * ho * wo if m.bias is not None else 0
        totals["acts"] += c_out * ho * wo

    def on_linear(m, inputs, out):
        totals["flops"] += m.in_features * m.out_features + m.out_features
        totals["acts"] += m.out_features

    handles = [m.register_forward_hook(on_conv if isinstance(m, nn.Conv2d) else on_linear)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, model.spec.in_channels, h, w, device=device))
    finally:
        for handle in handles:
            handle.remove()
    params = sum(p.numel() for p in model.parameters())
    return Complexity(totals["flops"], params, totals["acts"])


def _meta_model(name, **kwargs):
    with torch.device("meta"):  # shapes only: every standard model in milliseconds
        return regnet(name, **kwargs)


@pytest.mark.parametrize("name", list(STANDARD_MODELS))
def test_standard_models_equal_published_figures(name):
    g = GOLDEN_MODELS[name]
    assert complexity(regnet_spec(name)) == (g["flops"], g["params"], g["acts"])


@pytest.mark.parametrize("name", list(STANDARD_MODELS))
def test_analytic_equals_hook_counter_on_instantiated_model(name):
    model = _meta_model(name)
    for h, w in [(224, 224), (160, 160), (193, 257)]:
        assert complexity(model.spec, (h, w)) == measured_complexity(model, h, w, "meta"), (h, w)


@pytest.mark.parametrize("rounding", ["pycls", "torchvision"])
def test_params_equal_module_parameter_count_for_every_model(rounding):
    for name in STANDARD_MODELS:
        model = _meta_model(name, rounding=rounding, num_classes=37)
        assert complexity(model.spec).params == sum(p.numel() for p in model.parameters()), name


def test_hook_counter_agrees_on_real_cpu_forward():
    spec = AnyNetSpec(depths=(1, 2, 2), widths=(24, 48, 72), group_widths=(4, 6, 24),
                      bottleneck_multipliers=(2.0, 0.5, 1.0), strides=(1, 2, 2), se_ratio=0.5,
                      stem_width=16, in_channels=4, num_classes=5)
    for model, res in [(AnyNet(spec), (37, 50)), (regnet("RegNetY-200MF"), (64, 64))]:
        assert complexity(model.spec, res) == measured_complexity(model, *res, "cpu")


def test_timm_builds_the_same_parameter_counts():
    timm = pytest.importorskip("timm")
    for name, p in STANDARD_MODELS.items():
        family = "y" if p.se_ratio else "x"
        size = name.split("-")[1]
        tenths = round(float(size[:-2]) * (10 if size.endswith("GF") else 0.01))
        with torch.device("meta"):
            theirs = timm.create_model(f"regnet{family}_{tenths:03d}", pretrained=False)
        assert sum(q.numel() for q in theirs.parameters()) == GOLDEN_MODELS[name]["params"], name


def test_torchvision_parameter_counts():
    for name, tv in GOLDEN["torchvision"].items():
        assert complexity(regnet_spec(name, rounding="torchvision")).params == tv["num_params"]


def test_parts_add_up_and_track_spatial_size():
    spec = regnet_spec("RegNetY-400MF")
    res = (97, 130)
    total = stem_complexity(spec, *res)
    sizes = []
    for block, (h, w), cx in per_block_complexity(spec, res):
        assert cx == block_complexity(block, h, w)
        total = Complexity(*(a + b for a, b in zip(total, cx)))
        sizes.append((h, w))
    total = Complexity(*(a + b for a, b in zip(total, head_complexity(spec))))
    assert total == complexity(spec, res)
    # 97x130 -> stem 49x65 -> stages 25x33, 13x17, 7x9, 4x5: each stage's first input is the
    # previous stage's output.
    starts = [sizes[sum(spec.depths[:i])] for i in range(spec.num_stages)]
    assert starts == [(49, 65), (25, 33), (13, 17), (7, 9)]


def test_flops_scale_with_resolution_but_params_do_not():
    spec = regnet_spec("RegNetX-800MF")
    small, large = complexity(spec, 112), complexity(spec, 448)
    assert small.params == large.params
    assert small.flops < complexity(spec).flops < large.flops
    assert small.acts < large.acts


@pytest.mark.parametrize("bad", [0, -224, 224.0, (224,), (224, 0), "224", True])
def test_bad_resolution(bad):
    with pytest.raises(ValueError, match="^resolution:"):
        complexity(regnet_spec("RegNetX-200MF"), bad)


def test_spec_type_checked():
    with pytest.raises(TypeError, match="^spec:"):
        complexity({"depths": (1,)})
