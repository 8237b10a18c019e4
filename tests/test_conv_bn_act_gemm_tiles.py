"""Our register-tiled GEMMs for 1x1 convs (ConvKernel::kGemmTiles; float32, AVX-512): the eval
forward and the training forward's z with its batch moments (csrc/cpu/gemm_1x1_tiles.h; y and
the running statistics follow from them), and both gradients
of the backward, the input gradient through the same tiles and the weight gradient through
csrc/cpu/gemm_1x1_weight_grad.h. Against the float64 reference where the output channels fill
whole 4-vector blocks, end in a 1-, 2- or 3-vector block, or end mid-vector (masked stores), where
the rows fill whole tiles or leave single rows (batch 1 to 3, odd sizes), at stride 1 and 2, with
and without residual, ReLU and conv bias, NCHW and channels_last; the weight gradient where its
input channels end mid-vector in blocks of 1 to 4 vectors, its output channels leave single rows
after whole tiles, and its pixel rows span more than one chunk; NaN through ReLU as torch.relu;
its cached packed weight after in-place changes; and the fused module's eval through it.
REGNET_EXT_CPU_CONV=gemm_tiles makes the rules choose it (the autotuner times it against oneDNN,
tested in test_conv_bn_act_autotune.py)."""
import copy

import pytest
import torch
from torch import nn

import regnet_ext._C as compiled
from conv_bn_act_reference import make_case, positional_args
from regnet_ext.nn import FusedConvBNAct
from regnet_ext.ops import conv_bn_act
from test_conv_bn_act import _run_and_compare, assert_eval_follows_parameter_changes
from tolerances import assert_close_to_reference

pytestmark = pytest.mark.skipif(not getattr(compiled, "gemm_tiles_kernel", 0), reason="built without AVX-512")

# (batch, c_in, c_out, size): output vectors 1 (masked), 4, 5 (4 + 1), 7 (4 + 3, the last
# masked), 13 (4 + 4 + 4 + 1), 28 (masked); rows 1, 9, 49, 3 x 169.
SHAPES = [(1, 3, 5, 1), (1, 16, 64, 3), (2, 24, 80, 7), (3, 48, 104, 13), (1, 104, 208, 7), (2, 40, 440, 5)]


@pytest.fixture(autouse=True)
def gemm_tiles_rule(monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "gemm_tiles")


@pytest.mark.parametrize("shape", SHAPES, ids=[f"n{s[0]}c{s[1]}-{s[2]}h{s[3]}" for s in SHAPES])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_matches_float64_reference(shape, stride, channels_last):
    batch, c_in, c_out, size = shape
    for i, (relu, residual, bias) in enumerate([(True, False, True), (False, True, False), (True, True, True)]):
        case = make_case(batch, c_in, c_out, size, 1, stride, 1, channels_last=channels_last, residual=residual,
                         bias=bias, seed=10 * size + i)
        with torch.no_grad():
            _run_and_compare(case, stride=stride, groups=1, training=False, relu=relu, backward=False)


# (batch, c_in, c_out, size) for the training forward and the backward; per shape the weight
# gradient's input-channel blocks (vectors) and output-channel tiles (8 rows at 1-3 vectors, 6 at
# 4): 24 -> 44: one block of 2 (masked), 5 tiles + 4 single rows, 578 pixel rows (two chunks of
# 512); 48 -> 104: 3 vectors (whole); 104 -> 208: 4 + 3 (masked), 34 tiles + 4 rows; 40 -> 440:
# 3 (masked); 16 -> 30: 1, 3 tiles + 6 rows; 200 -> 24: 4 + 4 + 4 + 1 (masked), 529 rows; 32 -> 48
# at 10px: an even size, whose last row and column no output pixel reads at stride 2; 24 -> 40 at
# 47px: at stride 2, 1152 rows whose chunks end inside an output row (the weight gradient reads
# every other pixel of x in place, one run per output row).
TRAIN_SHAPES = [(2, 24, 44, 17), (3, 48, 104, 13), (1, 104, 208, 7), (2, 40, 440, 5), (2, 16, 30, 9), (1, 200, 24, 23),
                (2, 32, 48, 10), (2, 24, 40, 47)]


@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=[f"n{s[0]}c{s[1]}-{s[2]}h{s[3]}" for s in TRAIN_SHAPES])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_training_and_backward_match_float64_reference(shape, stride, channels_last):
    batch, c_in, c_out, size = shape
    settings = [(True, True, False, True), (False, False, True, False), (True, True, True, True)]
    for i, (training, relu, residual, bias) in enumerate(settings):
        case = make_case(batch, c_in, c_out, size, 1, stride, 1, channels_last=channels_last, residual=residual,
                         bias=bias, seed=100 * size + i)
        _run_and_compare(case, stride=stride, groups=1, training=training, relu=relu)


def test_nan_passes_through_relu_as_in_torch():
    case = make_case(1, 16, 32, 3, 1, 1, 1, channels_last=True, residual=False, seed=4)
    case["x"][0, 3, 1, 2] = float("nan")  # every output channel of that pixel is NaN
    with torch.no_grad():
        y = conv_bn_act(*positional_args(case), bias=case["bias"], relu=True)
    assert torch.isnan(y[0, :, 1, 2]).all() and not torch.isnan(y[0, :, 0, 0]).any()


def test_cached_weight_follows_parameter_changes():
    assert_eval_follows_parameter_changes(make_case(2, 32, 48, 5, 1, 1, 1, channels_last=True, residual=False,
                                                    seed=1))


def test_fused_module_eval_matches_stock():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(104, 208, 1, bias=False), nn.BatchNorm2d(208)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    stock = nn.Sequential(conv, bn, nn.ReLU()).eval().to(memory_format=torch.channels_last)
    fused = FusedConvBNAct(conv, bn, relu=True).eval()
    x = torch.randn(3, 104, 14, 14).contiguous(memory_format=torch.channels_last)
    reference = copy.deepcopy(stock).double()  # (fused shares conv and bn with stock)
    with torch.no_grad():
        assert_close_to_reference(fused(x), reference(x.double()), name="fused eval")
