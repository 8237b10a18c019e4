"""conv_bn_act forward (eval and training) and backward against a float64 plain-PyTorch
reference, over the issue's grid: group width {dense, 8, 16, 24, 64, depthwise} x stride {1, 2}
x kernel {1, 3} x spatial {7, 13, 14} x batch {1, 3} x relu x residual x eval/training x
NCHW/channels_last. The grid runs in float32 (the production dtype); float64 and bfloat16 have
their own tests. REGNET_EXT_CPU_CONV switches the KxK conv between our register tiles (the
arithmetic the CUDA kernels share) and ATen's, so both are checked."""
import itertools

import pytest
import torch

from conv_bn_act_reference import make_case, positional_args, reference_conv_bn_act
from regnet_ext.ops import conv_bn_act
from tolerances import assert_close_to_reference

# (name, c_in, c_out, groups): two groups of each width, so grouping itself is exercised.
GROUPINGS = [("dense", 8, 16, 1), ("gw8", 16, 16, 2), ("gw16", 32, 32, 2), ("gw24", 48, 48, 2),
             ("gw64", 128, 128, 2), ("depthwise", 8, 8, 8)]
GEOMETRIES = list(itertools.product([1, 2], [1, 3], [7, 13, 14], [1, 3]))  # stride, kernel, size, batch


def assert_eval_follows_parameter_changes(case, stride=1):
    """Eval calls of an ungrouped conv with an in-place change (an optimizer step, a
    load_state_dict) of its weight, BN scale and running variance before each: a kernel's cached
    (folded, packed) weight must see every change."""
    args = positional_args(case)
    with torch.no_grad():
        first = conv_bn_act(*args, bias=case["bias"], stride=stride)
        for name in ("weight", "bn_weight", "running_var"):
            case[name].mul_(1.5)
            again = conv_bn_act(*args, bias=case["bias"], stride=stride)
            expected = reference_conv_bn_act(*[a.double() for a in args], bias=case["bias"].double(),
                                             stride=stride)
            assert not torch.equal(again, first), f"a change of {name} was not seen"
            assert_close_to_reference(again, expected, name=f"y after changing {name}")
            first = again


def assert_fused_layer_runs_own_kernel(conv, x):
    """A FusedConvBNAct of `conv` (no bias) and a BN with random running statistics, in CPU
    inference: the stock modules' output, from the operator (one of our kernels, its own weight
    cache), not the Python fold's oneDNN path."""
    from torch import nn

    from regnet_ext.nn import FusedConvBNAct

    bn = nn.BatchNorm2d(conv.out_channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    stock = nn.Sequential(conv, bn, nn.ReLU()).eval()
    fused = FusedConvBNAct(conv, bn, relu=True).eval()
    assert fused._own_cpu_kernel_dtypes == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(fused(x), stock(x), rtol=1e-5, atol=1e-5)
    assert not fused._folded.filled  # the operator's own cache served it, not the Python fold


def _run_and_compare(case, *, stride, groups, training, relu, backward=True, momentum=0.1):
    params = ["x", "weight", "bias", "bn_weight", "bn_bias", "residual"]
    ours = {k: (v.detach().clone().requires_grad_(backward) if (k in params and v is not None) else
                (v.clone() if v is not None else None)) for k, v in case.items()}
    ref = {k: (v.detach().double().requires_grad_(backward) if (k in params and v is not None) else
               (v.double().clone() if v is not None else None)) for k, v in case.items()}
    y = conv_bn_act(ours["x"], ours["weight"], ours["bn_weight"], ours["bn_bias"], ours["running_mean"],
                    ours["running_var"], bias=ours["bias"], stride=stride, groups=groups,
                    training=training, momentum=momentum, relu=relu, residual=ours["residual"])
    y_ref = reference_conv_bn_act(ref["x"], ref["weight"], ref["bn_weight"], ref["bn_bias"],
                                  ref["running_mean"], ref["running_var"], bias=ref["bias"],
                                  stride=stride, groups=groups, training=training, momentum=momentum,
                                  relu=relu, residual=ref["residual"])
    assert_close_to_reference(y, y_ref, name="y")
    fmt = torch.channels_last if (case["x"].is_contiguous(memory_format=torch.channels_last)
                                  and not case["x"].is_contiguous()) else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt), "the output must keep x's memory format"
    if case["running_mean"] is not None:
        assert_close_to_reference(ours["running_mean"], ref["running_mean"], name="running_mean")
        assert_close_to_reference(ours["running_var"], ref["running_var"], name="running_var")
    if backward:
        grad = torch.randn(y_ref.shape, dtype=torch.float64)
        (y * grad.to(y.dtype)).sum().backward()
        (y_ref * grad).sum().backward()
        for k in params:
            if ours[k] is not None:
                assert_close_to_reference(ours[k].grad, ref[k].grad, name=f"grad of {k}")


@pytest.mark.parametrize("grouping", GROUPINGS, ids=[g[0] for g in GROUPINGS])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_grid_matches_float64_reference(grouping, training, channels_last, monkeypatch):
    _, c_in, c_out, groups = grouping
    for i, (stride, kernel, size, batch) in enumerate(GEOMETRIES):
        # relu, residual and the CPU conv backend (our register tiles, which hold the arithmetic
        # the CUDA kernels share, or ATen's) alternate over the geometries, so each setting meets
        # every grouping/mode/layout with both strides, kernels and sizes.
        relu, residual = bool(i % 2), bool((i // 2) % 2)
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", "tiles" if (i // 4) % 2 else "aten")
        case = make_case(batch, c_in, c_out, size, kernel, stride, groups,
                         channels_last=channels_last, residual=residual, seed=i)
        _run_and_compare(case, stride=stride, groups=groups, training=training, relu=relu)


@pytest.mark.parametrize("backend", ["tiles", "aten"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_relu_and_residual_on_every_kernel_path(relu, residual, training, backend, monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", backend)
    # 3x3 grouped tiles, the 1x1 GEMM path (strides 1 and 2) and a 5x5 kernel.
    for c_in, c_out, kernel, stride, groups in [(16, 16, 3, 2, 2), (16, 24, 1, 1, 1),
                                                (16, 24, 1, 2, 1), (8, 8, 5, 1, 1)]:
        case = make_case(3, c_in, c_out, 13, kernel, stride, groups, channels_last=True,
                         residual=residual)
        _run_and_compare(case, stride=stride, groups=groups, training=training, relu=relu)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_default_backend_mix_on_a_large_strided_grouped_conv(training, monkeypatch):
    # Unset REGNET_EXT_CPU_CONV mixes backends: a group width of 8 takes the weight gradient
    # from our tiles and the input gradient from oneDNN (cpu/conv_bn_act_cpu.h:
    # use_own_weight_grad).
    monkeypatch.delenv("REGNET_EXT_CPU_CONV", raising=False)
    case = make_case(2, 16, 16, 112, 3, 2, 2, channels_last=True, residual=True)
    _run_and_compare(case, stride=2, groups=2, training=training, relu=True)


@pytest.mark.parametrize("backend", ["tiles", "aten"])
def test_grouped_conv_with_more_outputs_than_inputs(backend, monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", backend)
    case = make_case(2, 16, 48, 9, 3, 1, 2, channels_last=True)  # 8 in, 24 out per group
    for training in (False, True):
        _run_and_compare(case, stride=1, groups=2, training=training, relu=True)


@pytest.mark.parametrize("backend", ["tiles", "aten"])
def test_float64_forward_and_backward(backend, monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", backend)
    case = make_case(2, 16, 16, 7, 3, 2, 4, dtype=torch.float64, channels_last=True)
    for training in (False, True):
        _run_and_compare(case, stride=2, groups=4, training=training, relu=True)


def test_non_contiguous_inputs():
    case = make_case(2, 16, 16, 14, 3, 1, 2)
    case["x"] = case["x"].transpose(2, 3)  # neither NCHW nor NHWC contiguous
    case["residual"] = case["residual"][:, :, :, :]
    case["weight"] = case["weight"].transpose(2, 3)
    for training in (False, True):
        _run_and_compare(case, stride=1, groups=2, training=training, relu=True)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("shape", [(16, 16, 3, 1, 2), (16, 32, 1, 1, 1), (16, 32, 1, 2, 1)],
                         ids=["grouped3x3", "gemm", "gemm_stride2"])
@pytest.mark.parametrize("backend", ["tiles", "aten"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no_residual"])
def test_16bit_within_plain_pytorch_error(residual, dtype, training, shape, backend, monkeypatch):
    """A residual goes into oneDNN's fused add where the conv is ungrouped, our epilogue where it
    is grouped. float16 runs also on CPUs whose oneDNN has no float16 convs (no AVX512-FP16, as
    on the AMD EPYC this was written on), where ATen's conv runs instead."""
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", backend)
    c_in, c_out, kernel, stride, groups = shape
    case = make_case(3, c_in, c_out, 14, kernel, stride, groups, dtype=dtype, channels_last=True,
                     residual=residual)
    args = lambda c: (c["x"], c["weight"], c["bn_weight"], c["bn_bias"], c["running_mean"].clone(),
                      c["running_var"].clone())
    kw = dict(bias=case["bias"], stride=stride, groups=groups, training=training, residual=case["residual"])
    y = conv_bn_act(*args(case), **kw)
    plain = reference_conv_bn_act(*args(case), **kw)
    case64 = {k: (v.double() if v is not None else None) for k, v in case.items()}
    ref = reference_conv_bn_act(*args(case64), **{**kw, "bias": case64["bias"], "residual": case64["residual"]})
    assert y.dtype == dtype
    assert_close_to_reference(y, ref, plain_torch=plain, name=f"{dtype} y")


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("shape", [(16, 16, 3, 1, 2), (48, 48, 1, 1, 1)], ids=["grouped3x3", "gemm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_16bit_gradients_within_plain_pytorch_error(dtype, training, shape):
    """16-bit gradients at batch 8 x 56px, where float32 takes our tiles' weight gradient for
    grouped convs and 16-bit types keep oneDNN's; ATen's weight gradient stays in x's dtype."""
    c_in, c_out, kernel, stride, groups = shape
    case = make_case(8, c_in, c_out, 56, kernel, stride, groups, dtype=dtype, channels_last=True)
    case64 = {k: (v.double() if v is not None else None) for k, v in case.items()}
    grad_y = torch.randn(8, c_out, 56, 56, dtype=torch.float64).contiguous(memory_format=torch.channels_last)

    def grads(fn, c):
        leaves = [c[k].detach().requires_grad_() for k in ("x", "weight", "bn_weight", "bn_bias", "residual")]
        x, weight, gamma, beta, residual = leaves
        y = fn(x, weight, gamma, beta, c["running_mean"].clone(), c["running_var"].clone(), bias=c["bias"],
               stride=stride, groups=groups, training=training, residual=residual)
        return torch.autograd.grad(y, leaves, grad_y.to(y.dtype))

    ours, plain, ref = grads(conv_bn_act, case), grads(reference_conv_bn_act, case), grads(reference_conv_bn_act, case64)
    for name, got, p, r in zip(("x", "weight", "bn_weight", "bn_bias", "residual"), ours, plain, ref):
        assert got.dtype == dtype
        assert_close_to_reference(got, r, plain_torch=p, name=f"grad {name}")


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum0.1", "cumulative"])
def test_running_stats_follow_batchnorm_over_steps(momentum):
    bn = torch.nn.BatchNorm2d(16, momentum=momentum).double()
    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    tracked = bn.num_batches_tracked.clone()
    weight = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    for step in range(4):
        x = torch.randn(3, 16, 9, 9, dtype=torch.float64) * (step + 1) + step
        conv_bn_act(x, weight, bn.weight.detach(), bn.bias.detach(), running_mean, running_var,
                    groups=2, training=True, momentum=momentum, num_batches_tracked=tracked)
        bn(torch.nn.functional.conv2d(x, weight, None, 1, 1, 1, 2))
        assert_close_to_reference(running_mean, bn.running_mean, name=f"running_mean step {step}")
        assert_close_to_reference(running_var, bn.running_var, name=f"running_var step {step}")
        assert tracked.item() == bn.num_batches_tracked.item() == step + 1


def test_training_without_running_stats_uses_batch_statistics():
    case = make_case(3, 16, 16, 7, 3, 1, 2)
    case["running_mean"] = case["running_var"] = None
    _run_and_compare(case, stride=1, groups=2, training=True, relu=True)
