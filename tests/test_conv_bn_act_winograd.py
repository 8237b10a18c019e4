"""The AVX-512 Winograd F(2x2, 3x3) grouped conv (csrc/cpu/grouped_conv_winograd.h), which the
CPU operator runs for float32 3x3 stride-1 convs with 32-64 (multiples of 8), 120 or 128
channels per group (eval; the training forward and input gradients over 1024+ output pixels), and
where the autotuner picks it at 16 per group (eval, the training forward and the input gradient):
against the float64 reference (odd and even sizes, images smaller than a tile, batches whose
tiles share a task, widths padded to whole vectors, residual and ReLU), against oneDNN
(REGNET_EXT_CPU_CONV=aten), its cached transformed weight after in-place changes, and the fused
module that routes to it."""
import pytest
import torch
from torch import nn

import regnet_ext._C as compiled
from conv_bn_act_reference import make_case, positional_args, reference_conv_bn_act
from test_conv_bn_act import _run_and_compare, assert_fused_layer_runs_own_kernel
from regnet_ext.ops import conv_bn_act, cpu_conv_autotune_excluding

pytestmark = pytest.mark.skipif(not getattr(compiled, "winograd_kernel", 0), reason="built without AVX-512")

# (batch, channels, channels per group, size): 49 tiles of 9x9 over 3 samples span task chunks.
SHAPES = [(2, 64, 32, 9), (1, 128, 64, 7), (3, 96, 48, 8), (1, 64, 64, 1), (2, 128, 64, 2),
          (3, 64, 32, 13), (1, 192, 64, 16), (2, 256, 128, 5), (3, 120, 40, 5), (1, 120, 40, 10),
          (2, 112, 56, 5), (1, 240, 120, 6), (1, 80, 40, 9)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"n{s[0]}c{s[1]}g{s[2]}s{s[3]}" for s in SHAPES])
def test_matches_float64_reference(shape):
    batch, channels, width, size = shape
    for relu, residual in ((True, False), (False, True), (True, True)):
        case = make_case(batch, channels, channels, size, 3, 1, channels // width,
                         channels_last=True, residual=residual, seed=size + width)
        _run_and_compare(case, stride=1, groups=channels // width, training=False, relu=relu)


# From 1024 output pixels on (use_winograd_in_training) it also computes the training forward's
# conv output and, in both modes, the input gradient.
GRAD_SHAPES = [(2, 64, 32, 24), (1, 128, 64, 33), (4, 96, 48, 16), (2, 80, 40, 23)]


@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=[f"n{s[0]}c{s[1]}g{s[2]}s{s[3]}" for s in GRAD_SHAPES])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_and_gradients_over_1024_pixels(shape, training):
    batch, channels, width, size = shape
    for relu, residual in ((True, False), (False, True)):
        case = make_case(batch, channels, channels, size, 3, 1, channels // width,
                         channels_last=True, residual=residual, seed=size)
        _run_and_compare(case, stride=1, groups=channels // width, training=training, relu=relu)


@pytest.mark.parametrize("batch, channels, groups, size", [(2, 128, 2, 14), (1, 96, 3, 7)])
def test_agrees_with_onednn(batch, channels, groups, size, monkeypatch):
    case = make_case(batch, channels, channels, size, 3, 1, groups, channels_last=True, seed=5)
    with torch.no_grad():
        ours = conv_bn_act(*positional_args(case), bias=case["bias"], groups=groups, residual=case["residual"])
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", "aten")
        onednn = conv_bn_act(*positional_args(case), bias=case["bias"], groups=groups, residual=case["residual"])
    torch.testing.assert_close(ours, onednn, rtol=1e-5, atol=1e-5)


# 16 per group: an eval candidate of the autotuner only (winograd_16_per_group_candidate), so the
# other candidates are left out here to make it the one that runs.
SHAPES_16 = [(2, 64, 9), (1, 32, 7), (3, 48, 13), (1, 160, 14), (2, 32, 1)]


@pytest.mark.parametrize("batch, channels, size", SHAPES_16, ids=[f"n{s[0]}c{s[1]}s{s[2]}" for s in SHAPES_16])
def test_16_per_group_where_the_autotuner_picks_it(autotune, batch, channels, size, monkeypatch):
    groups = channels // 16
    for relu, residual in ((True, False), (False, True)):
        case = make_case(batch, channels, channels, size, 3, 1, groups, channels_last=True, residual=residual,
                         seed=size + channels)
        args = dict(bias=case["bias"], groups=groups, relu=relu, residual=case["residual"])
        with cpu_conv_autotune_excluding("onednn", "narrow"):
            _run_and_compare(case, stride=1, groups=groups, training=False, relu=relu, backward=False)
            with torch.no_grad():
                winograd = conv_bn_act(*positional_args(case), **args)
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", "own")  # the narrow kernel
        with torch.no_grad():
            narrow = conv_bn_act(*positional_args(case), **args)
        monkeypatch.delenv("REGNET_EXT_CPU_CONV")
        assert not torch.equal(winograd, narrow), "Winograd must be what ran (its rounding differs)"


def _training_step(case, groups):
    """y and x's gradient of one training call on copies of the case's tensors."""
    x = case["x"].detach().clone().requires_grad_()
    stats = [case["running_mean"].clone(), case["running_var"].clone()]
    y = conv_bn_act(x, case["weight"], case["bn_weight"], case["bn_bias"], *stats, bias=case["bias"],
                    groups=groups, training=True)
    y.backward(torch.ones_like(y) + y.detach())
    return y.detach(), x.grad


def test_16_per_group_training_where_the_autotuner_picks_it(autotune, monkeypatch):
    # The training forward's candidates and the backward's Winograd input-gradient plans; all
    # others left out, so Winograd computes the conv output and the input gradient.
    others = ("onednn", "narrow", "onednn_input_grad+own_weight_grad", "narrow_input_grad+onednn_weight_grad",
              "narrow_input_grad+own_weight_grad")
    for batch, channels, size in ((2, 64, 12), (1, 48, 9)):
        groups = channels // 16
        case = make_case(batch, channels, channels, size, 3, 1, groups, channels_last=True, residual=False, seed=size)
        with cpu_conv_autotune_excluding(*others):
            _run_and_compare(case, stride=1, groups=groups, training=True, relu=True)
            winograd = _training_step(case, groups)
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", "own")  # the narrow kernel, forward and input gradient
        narrow = _training_step(case, groups)
        monkeypatch.delenv("REGNET_EXT_CPU_CONV")
        assert not torch.equal(winograd[0], narrow[0]) and not torch.equal(winograd[1], narrow[1]), \
            "Winograd must be what ran (its rounding differs)"


def test_cached_weight_follows_in_place_changes():
    case = make_case(1, 64, 64, 6, 3, 1, 2, channels_last=True, residual=False, seed=1)
    for step in range(3):
        with torch.no_grad():
            y = conv_bn_act(*positional_args(case), groups=2)
            expected = reference_conv_bn_act(*(t.double() for t in positional_args(case)), groups=2)
            torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
            case["weight"].mul_(1.5 - step)  # an optimizer step or load_state_dict, in place
            case["running_var"].add_(0.25)


def test_nan_passes_relu_as_in_torch():
    case = make_case(1, 64, 64, 6, 3, 1, 2, channels_last=True, residual=False)
    x = case["x"].clone()
    x[0, 3, 2, 2] = float("nan")  # group 0; output tile rows/cols 1-2 and 2-3 hold its reach
    with torch.no_grad():
        y = conv_bn_act(x, *positional_args(case)[1:], groups=2)
    assert torch.isnan(y[0, :32, 1:4, 1:4]).all() and not torch.isnan(y[0, 32:]).any()
    assert not torch.isnan(y[0, :32, 5, :]).any() and not torch.isnan(y[0, :32, :, 5]).any()


def test_fused_module_runs_it_in_inference():
    conv = nn.Conv2d(128, 128, 3, padding=1, groups=2, bias=False)
    assert_fused_layer_runs_own_kernel(conv, torch.randn(2, 128, 10, 10).contiguous(memory_format=torch.channels_last))
