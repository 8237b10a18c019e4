"""The grouped conv for 8 and 16 channels per group (csrc/cpu/grouped_conv_narrow.h; AVX-512 or
AVX2, whichever the build has), which the CPU operator runs for float32 at batch 1 or with 96+
channels: eval and training forward and backward against the float64 reference, with odd group
counts (a half-used last register), both strides, kernels 1, 3 and 5, image edges narrower and
wider than one tile, rows of every 3x3 tile width (4, 7, 8, 14 and 16 pixels), images at most 4
wide (AVX-512: tiles of 4 whole rows; tall ones leaving a partial last tile), input gradients
from the same kernel (stride 1) and from its stride-2 twin (grouped_conv_narrow_dx.h), weight
gradients from grouped_conv_narrow_weight_grad.h (AVX-512, 3x3), and the
same calls with the kernel switched off (REGNET_EXT_CPU_CONV=aten) agreeing; and its bfloat16
twin (grouped_conv_narrow_bf16.h) on the same shapes within plain PyTorch's bfloat16 error, and
in eval without the ReLU decisions that plain PyTorch's rounding gets wrong."""
import os

import pytest
import torch

import regnet_ext._C as compiled
from conv_bn_act_reference import (assert_bfloat16_within_plain_pytorch_error, make_case, positional_args,
                                   reference_conv_bn_act)
from test_conv_bn_act import _run_and_compare
from regnet_ext.ops import conv_bn_act

pytestmark = pytest.mark.skipif(not getattr(compiled, "narrow_group_kernel", 0), reason="built without AVX-512 or AVX2+FMA")

# (batch, channels, channels per group, size, kernel, stride): 104 = 13 groups of 8 (odd).
SHAPES = [(2, 104, 8, 9, 3, 1), (2, 112, 8, 16, 3, 2), (1, 8, 8, 5, 3, 1), (1, 24, 8, 29, 3, 2),
          (2, 104, 8, 7, 1, 1), (1, 40, 8, 15, 5, 1), (2, 96, 8, 30, 3, 1), (1, 48, 8, 3, 3, 2),
          (1, 32, 16, 9, 3, 1), (1, 48, 16, 29, 3, 2), (1, 16, 16, 14, 5, 1), (1, 64, 16, 7, 1, 1)]
# 3x3: rows 14 and 16 wide take one tile of 14 or 16 pixels, others tiles of 8, 7 or 4; with
# AVX-512, images at most 4 wide tiles of 4 whole rows (4x4, 3x3 and 4x4 from 7 and 8 at stride 2).
TILE_WIDTH_SHAPES = [(1, 104, 8, 14, 3, 1), (1, 48, 8, 28, 3, 2), (1, 40, 8, 16, 3, 1), (1, 64, 16, 32, 3, 2),
                     (1, 32, 16, 14, 3, 1), (2, 104, 8, 4, 3, 1), (1, 40, 8, 7, 3, 2), (1, 48, 16, 4, 3, 1),
                     (1, 64, 16, 8, 3, 2), (1, 24, 8, 3, 3, 1)]
ALL_SHAPES = SHAPES + TILE_WIDTH_SHAPES


@pytest.mark.parametrize("shape", ALL_SHAPES,
                         ids=[f"n{s[0]}c{s[1]}g{s[2]}s{s[3]}k{s[4]}st{s[5]}" for s in ALL_SHAPES])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_matches_float64_reference(shape, training):
    batch, channels, width, size, kernel, stride = shape
    for relu, residual in ((True, False), (False, True)):
        case = make_case(batch, channels, channels, size, kernel, stride, channels // width,
                         channels_last=True, residual=residual, seed=size + kernel)
        _run_and_compare(case, stride=stride, groups=channels // width, training=training, relu=relu)


# REGNET_EXT_CPU_CONV=own takes every stride-1 input gradient with padding k/2 from the forward
# kernel (each group's weight transposed and flipped), every 3x3 stride-2 one at 8 per group from
# grouped_conv_narrow_dx.h (use_narrow_input_grad), and every grouped weight gradient from our
# kernels, with AVX-512 the 3x3 ones from grouped_conv_narrow_weight_grad.h; the rules alone only
# some of them.
OWN_GRADIENTS = [s for s in ALL_SHAPES if s[5] == 1 or s[4] == 3]


@pytest.mark.parametrize("shape", OWN_GRADIENTS,
                         ids=[f"n{s[0]}c{s[1]}g{s[2]}s{s[3]}k{s[4]}st{s[5]}" for s in OWN_GRADIENTS])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradients_from_our_kernels(shape, training, monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "own")
    batch, channels, width, size, kernel, stride = shape
    case = make_case(batch, channels, channels, size, kernel, stride, channels // width, channels_last=True,
                     residual=stride == 1, seed=size + kernel + 1)
    _run_and_compare(case, stride=stride, groups=channels // width, training=training, relu=True)


@pytest.mark.parametrize("width, stride", [(8, 1), (16, 1), (8, 2), (16, 2)])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_narrow_images_taller_than_a_tile(width, stride, training, monkeypatch):
    """Images at most 4 wide, 9 and 6 rows out: two full tiles of 4 rows and a partial one, or one
    and a partial; 4, 3 and 1 pixels a row."""
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "own")
    channels = 104 if width == 8 else 48
    for seed, (h_out, w_out) in enumerate(((9, 4), (6, 3), (9, 1))):
        h, w = (h_out, w_out) if stride == 1 else (2 * h_out, 2 * w_out - 1)
        case = make_case(2, channels, channels, 4, 3, stride, channels // width, channels_last=True, seed=seed)
        gen = torch.Generator().manual_seed(100 + seed)
        case["x"] = torch.randn(2, channels, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
        case["residual"] = torch.randn(2, channels, h_out, w_out, generator=gen).contiguous(
            memory_format=torch.channels_last)
        _run_and_compare(case, stride=stride, groups=channels // width, training=training, relu=True)


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


# ---- bfloat16 (csrc/cpu/grouped_conv_narrow_bf16.h, CPUs with AVX512-BF16) -------------------
# REGNET_EXT_CPU_CONV=own runs it on every shape it can compute; the rules alone would pick it
# only for 8 per group at batch 1.
needs_bf16_kernel = pytest.mark.skipif(not getattr(compiled, "narrow_group_bf16_kernel", 0),
                                       reason="built without AVX512-BF16")


@needs_bf16_kernel
@pytest.mark.parametrize("shape", ALL_SHAPES, ids=[f"n{s[0]}c{s[1]}g{s[2]}s{s[3]}k{s[4]}st{s[5]}" for s in ALL_SHAPES])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_bfloat16_within_plain_pytorch_error(shape, training, monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "own")
    batch, channels, width, size, kernel, stride = shape
    groups = channels // width
    for relu, residual in ((True, False), (False, True)):
        case = make_case(batch, channels, channels, size, kernel, stride, groups, dtype=torch.bfloat16,
                         channels_last=True, residual=residual, seed=size + kernel)
        assert_bfloat16_within_plain_pytorch_error(conv_bn_act, case, stride=stride, groups=groups,
                                                   training=training, relu=relu)


@needs_bf16_kernel
def test_bfloat16_eval_keeps_the_sign_of_every_preactivation(monkeypatch):
    """In eval the kernel applies BN's scale and shift in float32 to the conv of the weight as
    given (exact bfloat16 products, float32 sums), so each output has the sign of the float64
    result wherever that is not within float32 rounding of zero, and the ReLU decides as in
    float64. Folding the scale into a bfloat16 weight, as before, flipped 107 signs over these 30
    cases (plain PyTorch's bfloat16 conv and BN: 81)."""
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "own")
    flips = 0
    for shape in [(1, 64, 16, 32, 3, 2), (1, 48, 16, 29, 3, 2), (1, 32, 16, 14, 3, 1), (1, 104, 8, 14, 3, 1),
                  (2, 104, 8, 9, 3, 1)]:
        batch, channels, width, size, kernel, stride = shape
        for seed in range(6):
            case = make_case(batch, channels, channels, size, kernel, stride, channels // width,
                             dtype=torch.bfloat16, channels_last=True, residual=False, seed=seed)
            args = positional_args(case)
            kwargs = dict(bias=case["bias"], stride=stride, groups=channels // width, relu=False)
            with torch.no_grad():
                ours = conv_bn_act(*args, **kwargs).double()
                exact = reference_conv_bn_act(*[a.double() for a in args], **{
                    **kwargs, "bias": None if case["bias"] is None else case["bias"].double()})
            decided = exact.abs() > 1e-5 * exact.abs().max()
            flips += ((ours > 0) != (exact > 0))[decided].sum().item()
    assert flips == 0


@needs_bf16_kernel
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_bfloat16_agrees_with_onednn(training, monkeypatch):
    """Both sum exact bfloat16 products in float32 (vdpbf16ps), in different orders: the results
    differ by one bfloat16 rounding step of the float32 sums, plus, in eval, the rounding of the
    folded bias, which oneDNN receives in bfloat16 and ours keeps in float32 (up to 2^-5 for
    biases below 8). No residual: oneDNN does not fuse it into a grouped bfloat16 conv, so its
    output would be rounded twice."""
    case = make_case(1, 104, 104, 14, 3, 1, 13, dtype=torch.bfloat16, channels_last=True, residual=False, seed=4)
    args = (case["x"], case["weight"], case["bn_weight"], case["bn_bias"], case["running_mean"].clone(),
            case["running_var"].clone())
    with torch.no_grad():
        ours = conv_bn_act(*args, bias=case["bias"], groups=13, residual=case["residual"], training=training)
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", "aten")
        onednn = conv_bn_act(*args, bias=case["bias"], groups=13, residual=case["residual"], training=training)
    torch.testing.assert_close(ours.float(), onednn.float(), rtol=2 ** -7, atol=2 ** -5)
    assert (ours == onednn).float().mean() > 0.5
