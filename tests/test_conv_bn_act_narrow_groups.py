"""The AVX-512 grouped conv for 8 channels per group (csrc/cpu/grouped_conv_narrow.h), which the
CPU operator runs for float32 at batch 1 or with 96+ channels: eval and training forward and
backward against the float64 reference, with odd group counts (a half-used last register),
both strides, kernels 1, 3 and 5, image edges narrower and wider than one 14-pixel tile, and
the same calls with the kernel switched off (REGNET_EXT_CPU_CONV=aten) agreeing."""
import os

import pytest
import torch

import regnet_ext._C as compiled
from conv_bn_act_reference import make_case
from test_conv_bn_act import _run_and_compare
from regnet_ext.ops import conv_bn_act

pytestmark = pytest.mark.skipif(not getattr(compiled, "narrow_group_kernel", 0), reason="built without AVX-512")

# (batch, channels, channels per group, size, kernel, stride): 104 = 13 groups of 8 (odd).
SHAPES = [(2, 104, 8, 9, 3, 1), (2, 112, 8, 16, 3, 2), (1, 8, 8, 5, 3, 1), (1, 24, 8, 29, 3, 2),
          (2, 104, 8, 7, 1, 1), (1, 40, 8, 15, 5, 1), (2, 96, 8, 30, 3, 1), (1, 48, 8, 3, 3, 2),
          (1, 32, 16, 9, 3, 1), (1, 48, 16, 29, 3, 2), (1, 16, 16, 14, 5, 1), (1, 64, 16, 7, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"n{s[0]}c{s[1]}g{s[2]}s{s[3]}k{s[4]}st{s[5]}" for s in SHAPES])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_matches_float64_reference(shape, training):
    batch, channels, width, size, kernel, stride = shape
    for relu, residual in ((True, False), (False, True)):
        case = make_case(batch, channels, channels, size, kernel, stride, channels // width,
                         channels_last=True, residual=residual, seed=size + kernel)
        _run_and_compare(case, stride=stride, groups=channels // width, training=training, relu=relu)


@pytest.mark.parametrize("batch, channels, groups", [(2, 104, 13), (1, 160, 10)])
def test_agrees_with_onednn(batch, channels, groups, monkeypatch):
    case = make_case(batch, channels, channels, 14, 3, 1, groups, channels_last=True, residual=False, seed=3)
    args = (case["x"], case["weight"], case["bn_weight"], case["bn_bias"], case["running_mean"],
            case["running_var"])
    with torch.no_grad():
        ours = conv_bn_act(*args, bias=case["bias"], groups=groups)
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", "aten")
        onednn = conv_bn_act(*args, bias=case["bias"], groups=groups)
    torch.testing.assert_close(ours, onednn, rtol=1e-5, atol=1e-5)


def test_nan_passes_relu_as_in_torch():
    case = make_case(1, 16, 16, 5, 3, 1, 2, channels_last=True, residual=False)
    x = case["x"].clone()
    x[0, 3, 2, 2] = float("nan")
    with torch.no_grad():
        y = conv_bn_act(x, case["weight"], case["bn_weight"], case["bn_bias"], case["running_mean"],
                        case["running_var"], groups=2)
    assert torch.isnan(y[0, :8, 1:4, 1:4]).all() and not torch.isnan(y[0, 8:]).any()
