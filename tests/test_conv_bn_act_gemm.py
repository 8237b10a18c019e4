"""The 1x1 conv's whole-tensor GEMM kernel (ConvKernel::kGemm, csrc/cpu/conv_bn_act_forward.cpp):
one ATen GEMM over every output pixel and our epilogue pass, in eval and the training forward,
float32 and bfloat16. REGNET_EXT_CPU_CONV=own makes the rules choose it on every 1x1 shape; the
autotuner's choice between it and oneDNN is tested in test_conv_bn_act_autotune.py."""
import pytest
import torch

from conv_bn_act_reference import assert_bfloat16_within_plain_pytorch_error, make_case
from regnet_ext.nn import FusedConvBNAct
from regnet_ext.ops import conv_bn_act
from test_conv_bn_act import _run_and_compare, assert_eval_follows_parameter_changes

# (batch, c_in, c_out, size, stride): odd and even sizes, strides 1 and 2, batch 1 and more.
SHAPES = [(3, 16, 24, 13, 1), (1, 24, 16, 14, 2), (2, 48, 104, 7, 1)]


@pytest.fixture
def gemm_rule(monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "own")


@pytest.mark.parametrize("shape", SHAPES, ids=[f"n{s[0]}c{s[1]}-{s[2]}h{s[3]}s{s[4]}" for s in SHAPES])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_float32_matches_float64_reference(gemm_rule, shape, training, channels_last):
    batch, c_in, c_out, size, stride = shape
    for i, (relu, residual, bias) in enumerate([(True, False, True), (False, True, False), (True, True, True)]):
        case = make_case(batch, c_in, c_out, size, 1, stride, 1, channels_last=channels_last, residual=residual,
                         bias=bias, seed=10 * size + i)
        _run_and_compare(case, stride=stride, groups=1, training=training, relu=relu)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_bfloat16_within_plain_pytorch_error(gemm_rule, training):
    for relu, residual in ((True, False), (False, True)):
        case = make_case(2, 48, 104, 14, 1, 1, 1, dtype=torch.bfloat16, channels_last=True, residual=residual,
                         seed=3)
        # With ReLU the gradients are not compared: where y is within a rounding of 0, ours and
        # plain PyTorch's bfloat16 y can fall on either side, and the mask flip moves a gradient
        # by O(1) (the backward is the same code for every forward kernel).
        assert_bfloat16_within_plain_pytorch_error(conv_bn_act, case, training=training, relu=relu,
                                                   gradients=not relu)


def test_cached_fold_follows_parameter_changes(gemm_rule):
    """The transposed folded weight is cached per parameter version: an in-place change (an
    optimizer step, a load_state_dict) must be seen by the next call."""
    assert_eval_follows_parameter_changes(make_case(1, 16, 24, 7, 1, 1, 1, channels_last=True, residual=False,
                                                    seed=1))


def test_fused_module_runs_the_operator(gemm_rule):
    """A fused 1x1 layer's no-grad eval call goes to the operator (which may choose the GEMM),
    not to the Python oneDNN path: the outputs are the operator's, bit for bit."""
    conv, bn = torch.nn.Conv2d(32, 48, 1, bias=False), torch.nn.BatchNorm2d(48)
    torch.nn.init.uniform_(bn.running_mean, -1, 1)
    torch.nn.init.uniform_(bn.running_var, 0.5, 2)
    fused = FusedConvBNAct(conv, bn, relu=True).eval()
    x = torch.randn(2, 32, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = fused(x)
        direct = conv_bn_act(x, conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        stock = torch.relu(bn(conv(x)))
    assert torch.equal(got, direct)
    torch.testing.assert_close(got, stock, rtol=1e-5, atol=1e-5)
