"""Our stem tiles (ConvKernel::kStemTiles, csrc/cpu/stem_conv_tiles.h; float32, AVX-512): dense
KxK convs with at most 4 input channels, in eval (the epilogue in registers) and in the training
forward (z, then our BN passes). Against the float64 reference with 1 to 4 input channels, 3x3,
5x5 and 7x7 kernels at stride 1 and 2, output channels that fill whole 4-vector blocks, end in a
1- to 3-vector block or mid-vector (masked stores), output rows that end in tiles of 8, 4, 2 and
1 pixels, residual, ReLU and conv bias on and off, NCHW and channels_last, and the gradients
after a training forward through it. The rules choose the tiles wherever our kernels may run
(the tests' default: autotuning off); the autotuner times them against oneDNN."""
import copy

import pytest
import torch
from torch import nn

import regnet_ext._C as compiled
from conv_bn_act_reference import make_case
from regnet_ext.nn import FusedConvBNAct
from regnet_ext.ops.cpu_autotune import clear_cpu_conv_autotune, cpu_conv_autotune_records
from test_conv_bn_act import _run_and_compare, assert_eval_follows_parameter_changes
from tolerances import assert_close_to_reference

pytestmark = pytest.mark.skipif(not getattr(compiled, "gemm_tiles_kernel", 0), reason="built without AVX-512")

# (batch, c_in, c_out, size, kernel, stride). Output channels: 32 (RegNet's stem, 2 vectors), 16,
# 24 (masked), 80 (4 + 1 vectors), 104 (4 + 3, the last masked). Output rows: 112 px = 9 tiles of
# 12 + 4; 13 = 12 + 1; 7 = 4 + 2 + 1; 15 at one vector = 12 + 2 + 1; 6 = 6 at 4 vectors.
SHAPES = [(1, 3, 32, 224, 3, 2), (2, 3, 32, 25, 3, 2), (3, 1, 16, 15, 3, 1), (2, 2, 24, 13, 5, 1),
          (1, 4, 80, 12, 7, 2), (2, 3, 104, 14, 3, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"n{s[0]}c{s[1]}-{s[2]}h{s[3]}k{s[4]}s{s[5]}" for s in SHAPES])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_matches_float64_reference(shape, training, channels_last):
    batch, c_in, c_out, size, kernel, stride = shape
    for i, (relu, residual, bias) in enumerate([(True, False, False), (False, True, True), (True, True, True)]):
        if training and size == 224 and i > 0:
            continue  # one full-size training case: the backward's reference is slow
        case = make_case(batch, c_in, c_out, size, kernel, stride, 1, channels_last=channels_last,
                         residual=residual, bias=bias, seed=10 * size + i)
        if training:
            _run_and_compare(case, stride=stride, groups=1, training=True, relu=relu)
        else:
            with torch.no_grad():
                _run_and_compare(case, stride=stride, groups=1, training=False, relu=relu, backward=False)


def test_cached_weight_follows_parameter_changes():
    assert_eval_follows_parameter_changes(make_case(2, 3, 32, 9, 3, 2, 1, channels_last=True, residual=False,
                                                    seed=1), stride=2)


def test_autotuner_times_them_against_onednn(monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_AUTOTUNE", "1")
    clear_cpu_conv_autotune()
    try:
        case = make_case(2, 3, 32, 16, 3, 2, 1, channels_last=True, residual=False, seed=3)
        _run_and_compare(case, stride=2, groups=1, training=False, relu=True, backward=False)
        _run_and_compare(case, stride=2, groups=1, training=True, relu=True)
        records = {r["pass"]: r for r in cpu_conv_autotune_records() if r["x_shape"][1] == 3}
        assert set(records) == {"eval", "train_forward"}
        for r in records.values():
            assert set(r["median_us"]) == {"onednn", "stem_tiles"}
            assert r["chosen"] == min(r["median_us"], key=r["median_us"].get)
    finally:
        clear_cpu_conv_autotune()


def test_fused_stem_eval_runs_the_operator_and_matches_stock():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    stock = nn.Sequential(conv, bn, nn.ReLU()).eval().to(memory_format=torch.channels_last)
    fused = FusedConvBNAct(conv, bn, relu=True).eval()
    assert torch.float32 in fused._own_cpu_kernel_dtypes  # the operator, not the packed oneDNN conv
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    reference = copy.deepcopy(stock).double()  # (fused shares conv and bn with stock)
    with torch.no_grad():
        assert_close_to_reference(fused(x), reference(x.double()), name="fused eval")
