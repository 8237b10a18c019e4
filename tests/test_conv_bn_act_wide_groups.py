"""Our wide-group tiles: float32 grouped convs with a multiple of 16 channels per group from 32 on,
AVX-512; the forward (csrc/cpu/grouped_conv_wide.h) in eval and training, the weight gradient
(csrc/cpu/grouped_conv_wide_weight_grad.h). Against the float64 reference where a group's
outputs fill one 64-channel block, several, or end in a block of 1 or 3 vectors (80, 112 per
group), at stride 1 and 2, where the output pixels fill whole 6-pixel tiles or leave a shorter
one (tiles that wrap into the next row and image), 1px images, residual and ReLU; the gradients
in training and eval, over one chunk of output rows and several, 3x3 and 5x5; against oneDNN;
the weight gradient's independence of the thread count; its cached packed weight after in-place
changes; NaN through ReLU; the fused module routing to it; and the autotuner timing both against
oneDNN. REGNET_EXT_CPU_CONV=wide_group makes the rules choose them."""
import pytest
import torch
from torch import nn

import regnet_ext._C as compiled
from conv_bn_act_reference import make_case, positional_args, reference_conv_bn_act
from regnet_ext.ops import clear_cpu_conv_autotune, conv_bn_act, cpu_conv_autotune_records
from test_conv_bn_act import _run_and_compare, assert_fused_layer_runs_own_kernel

pytestmark = pytest.mark.skipif(not getattr(compiled, "gemm_tiles_kernel", 0), reason="built without AVX-512")

# (batch, channels, channels per group, size, stride)
SHAPES = [(1, 64, 32, 7, 2), (3, 128, 64, 13, 2), (2, 96, 48, 14, 1), (1, 256, 128, 7, 1), (2, 192, 64, 9, 2),
          (1, 160, 80, 5, 1), (3, 224, 112, 6, 2), (2, 64, 32, 1, 1)]


@pytest.fixture
def wide_group_rule(monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "wide_group")


@pytest.mark.parametrize("shape", SHAPES, ids=[f"n{s[0]}c{s[1]}g{s[2]}h{s[3]}s{s[4]}" for s in SHAPES])
def test_matches_float64_reference(shape, wide_group_rule):
    batch, channels, width, size, stride = shape
    for relu, residual, bias in ((True, False, False), (False, True, True), (True, True, False)):
        case = make_case(batch, channels, channels, size, 3, stride, channels // width, channels_last=True,
                         residual=residual, bias=bias, seed=size + width + stride)
        with torch.no_grad():
            _run_and_compare(case, stride=stride, groups=channels // width, training=False, relu=relu,
                             backward=False)


# (batch, channels, channels per group, size, stride, kernel): the weight gradient sums output rows
# in chunks of about 512 pixels (7 of them at batch 2, 40px), tiles of output channels end short
# (48 and 80 per group), 5x5 taps reach two pixels into the padding.
GRADIENT_SHAPES = [(2, 64, 32, 40, 1, 3), (3, 128, 64, 13, 2, 3), (2, 96, 48, 9, 1, 5), (1, 256, 128, 7, 1, 3),
                   (2, 160, 80, 11, 2, 3)]


@pytest.mark.parametrize("shape", GRADIENT_SHAPES,
                         ids=[f"n{s[0]}c{s[1]}g{s[2]}h{s[3]}s{s[4]}k{s[5]}" for s in GRADIENT_SHAPES])
def test_gradients_match_float64_reference(shape, wide_group_rule):
    batch, channels, width, size, stride, kernel = shape
    for training, relu, residual, bias in ((True, True, False, False), (True, False, True, True),
                                           (False, True, True, False)):
        case = make_case(batch, channels, channels, size, kernel, stride, channels // width, channels_last=True,
                         residual=residual, bias=bias, seed=size + width + kernel)
        _run_and_compare(case, stride=stride, groups=channels // width, training=training, relu=relu)


def test_weight_gradient_does_not_depend_on_thread_count(wide_group_rule):
    case = make_case(2, 128, 128, 30, 3, 1, 2, channels_last=True, residual=False, seed=5)
    grads, threads = [], torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            weight = case["weight"].clone().requires_grad_()
            y = conv_bn_act(case["x"], weight, *positional_args(case)[2:], groups=2)  # eval: g is dz
            y.backward(torch.ones_like(y))
            grads.append(weight.grad)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


@pytest.mark.parametrize("stride", [1, 2])
def test_agrees_with_onednn(stride, monkeypatch):
    case = make_case(2, 192, 192, 14, 3, stride, 3, channels_last=True, seed=stride)
    args = positional_args(case)
    with torch.no_grad():
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", "wide_group")
        ours = conv_bn_act(*args, bias=case["bias"], stride=stride, groups=3, residual=case["residual"])
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", "aten")
        onednn = conv_bn_act(*args, bias=case["bias"], stride=stride, groups=3, residual=case["residual"])
    torch.testing.assert_close(ours, onednn, rtol=1e-5, atol=1e-5)


def test_cached_weight_follows_in_place_changes(wide_group_rule):
    case = make_case(1, 128, 128, 7, 3, 2, 2, channels_last=True, residual=False, seed=1)
    previous = None
    for step in range(3):
        with torch.no_grad():
            y = conv_bn_act(*positional_args(case), stride=2, groups=2)
            expected = reference_conv_bn_act(*(t.double() for t in positional_args(case)), stride=2, groups=2)
            torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
            assert previous is None or not torch.equal(y, previous), f"step {step}: a change was not seen"
            previous = y
            case["weight"].mul_(1.5 - step)  # an optimizer step or load_state_dict, in place
            case["running_var"].add_(0.25)


def test_nan_passes_relu_as_in_torch(wide_group_rule):
    case = make_case(1, 64, 64, 6, 3, 1, 2, channels_last=True, residual=False)
    x = case["x"].clone()
    x[0, 3, 2, 2] = float("nan")  # group 0: reaches output rows and columns 1-3
    with torch.no_grad():
        y = conv_bn_act(x, *positional_args(case)[1:], groups=2)
    assert torch.isnan(y[0, :32, 1:4, 1:4]).all() and not torch.isnan(y[0, 32:]).any()
    assert not torch.isnan(y[0, :32, 5, :]).any() and not torch.isnan(y[0, :32, :, 5]).any()


def test_fused_module_runs_it_in_inference():
    conv = nn.Conv2d(128, 128, 3, stride=2, padding=1, groups=2, bias=False)
    assert_fused_layer_runs_own_kernel(conv, torch.randn(2, 128, 14, 14).contiguous(memory_format=torch.channels_last))


def test_autotuner_times_it_against_onednn(monkeypatch):
    monkeypatch.delenv("REGNET_EXT_CPU_CONV", raising=False)
    monkeypatch.delenv("REGNET_EXT_CPU_AUTOTUNE", raising=False)
    clear_cpu_conv_autotune()
    case = make_case(1, 192, 192, 9, 3, 2, 3, channels_last=True, seed=3)
    try:
        with torch.no_grad():
            y = conv_bn_act(*positional_args(case), bias=case["bias"], stride=2, groups=3)
        records = [r for r in cpu_conv_autotune_records() if r["pass"] == "eval" and r["groups"] == 3]
        assert len(records) == 1 and set(records[0]["median_us"]) == {"onednn", "wide_group"}
        expected = reference_conv_bn_act(*(t.double() for t in positional_args(case)), bias=case["bias"].double(),
                                         stride=2, groups=3)
        torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    finally:
        clear_cpu_conv_autotune()


def test_autotuner_times_them_in_training(monkeypatch):
    monkeypatch.delenv("REGNET_EXT_CPU_CONV", raising=False)
    monkeypatch.delenv("REGNET_EXT_CPU_AUTOTUNE", raising=False)
    clear_cpu_conv_autotune()
    case = make_case(1, 192, 192, 9, 3, 2, 3, channels_last=True, residual=False, seed=4)
    try:
        _run_and_compare(case, stride=2, groups=3, training=True, relu=True)
        records = {r["pass"]: r for r in cpu_conv_autotune_records() if r["groups"] == 3}
        assert set(records["train_forward"]["median_us"]) == {"onednn", "wide_group"}
        assert set(records["backward"]["median_us"]) == {"onednn", "onednn_input_grad+own_weight_grad"}
    finally:
        clear_cpu_conv_autotune()
