"""pool_linear (csrc/cpu/pool_linear.cpp), a classifier head in one call, and its backward, against
the float64 reference in every memory format, with and without bias, on channel counts that fill
whole SIMD vectors and ones that leave a tail; gradcheck, its errors and opcheck; and FusedHead,
which fuse() swaps in for our and timm's heads: taken for float32 CPU inputs (not under autocast,
nor with an active dropout), equal to the stock head in eval and in training steps, state_dict
and unfuse unchanged."""
import copy

import pytest
import torch
from torch import nn

from regnet_ext.models import regnet
from regnet_ext.nn import FusedHead, FusedLinear, fuse, unfuse
from regnet_ext.ops import pool_linear
from test_fuse import assert_rel_close, images, pickled_copy, randomize


def _case(batch, channels, height, width, classes, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    weight = torch.randn(classes, channels, generator=g, dtype=dtype) / channels ** 0.5
    bias = torch.randn(classes, generator=g, dtype=dtype)
    return x, weight, bias


def _reference(x, weight, bias):
    return nn.functional.linear(x.double().mean((2, 3)), weight.double(),
                                None if bias is None else bias.double())


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other row of a taller tensor: neither format
        taller = torch.repeat_interleave(x, 2, dim=2)
        return taller[:, :, ::2]
    return x.contiguous()


# (batch, channels, height, width, classes): RegNetY-400MF's head; 13 and 67 channels leave a
# SIMD tail in pooling and in the dot products; batches 1, 3 and 5 leave a partial group of
# four samples; 7, 37 and 10 classes a partial tile of classes (4 or 2 a tile); a 1x1 image; 130
# channels make three pooling blocks, the last of two channels.
SHAPES = [(8, 440, 7, 7, 1000), (3, 13, 5, 3, 7), (1, 1, 1, 1, 1), (5, 67, 2, 9, 37),
          (2, 130, 4, 4, 10)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_the_reference(shape, layout, dtype, with_bias):
    x, weight, bias = _case(*shape)
    expected = _reference(x, weight, bias if with_bias else None)
    x, weight, bias = (t.to(dtype) for t in (x, weight, bias))
    y = pool_linear(_layout(x, layout), weight, bias if with_bias else None)
    assert y.shape == expected.shape and y.dtype == dtype and y.is_contiguous()
    assert_rel_close(y, expected, 1e-12 if dtype == torch.float64 else 1e-5, "pool_linear")


def test_bad_input_names_the_argument():
    x, weight, bias = _case(2, 8, 3, 3, 5, dtype=torch.float32)
    op = torch.ops.regnet_ext.pool_linear
    with pytest.raises(RuntimeError, match="x .* must be 4-D"):
        op(x[0], weight, bias)
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        op(x.half(), weight.half(), bias.half())
    with pytest.raises(RuntimeError, match="weight must have the dtype of x"):
        op(x, weight.double(), bias)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[classes, 8\]"):
        op(x, weight[:, :7], bias)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[classes, 8\]"):
        op(x, weight[None], bias)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[5\]"):
        op(x, weight, bias[:4])
    with pytest.raises(RuntimeError, match="bias must have the dtype of x"):
        op(x, weight, bias.double())
    with pytest.raises(RuntimeError, match="x must not be empty"):
        op(x[:, :, :0], weight, bias)
    with pytest.raises(RuntimeError, match=r"grad_y must have shape \[2, 5\]"):
        torch.ops.regnet_ext.pool_linear_backward(torch.ones(2, 4), x, weight)
    with pytest.raises(ValueError, match="x must be a CPU tensor"):
        pool_linear(x.to("meta"), weight, bias)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided"])
@pytest.mark.parametrize("shape", [(3, 13, 5, 3, 7), (2, 130, 4, 4, 10)])
def test_backward_matches_the_reference_and_gradcheck(shape, layout):
    x, weight, bias = _case(*shape)
    grad_y = torch.randn(shape[0], shape[4], dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    _reference(*leaves).backward(grad_y)
    ours = [_layout(x, layout).requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    pool_linear(*ours).backward(grad_y)
    for name, mine, ref in zip(("x", "weight", "bias"), ours, leaves):
        assert_rel_close(mine.grad, ref.grad, 1e-12, f"grad {name}")
    assert ours[0].grad.stride() == _layout(x, layout).contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format).stride()
    small = [t.requires_grad_() for t in _case(2, 9, 3, 2, 4)]
    assert torch.autograd.gradcheck(pool_linear, (_layout(small[0].detach(), layout).requires_grad_(), *small[1:]))
    assert torch.autograd.gradcheck(lambda a, w: pool_linear(a, w, None), (small[0], small[1]))


def test_double_backward_is_refused():
    x, weight, bias = (t.requires_grad_() for t in _case(2, 9, 3, 2, 4))
    (grad_x,) = torch.autograd.grad(pool_linear(x, weight, bias).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_x.sum().backward()


def test_opcheck():
    x, weight, bias = _case(3, 13, 5, 3, 7, dtype=torch.float32)
    op = torch.ops.regnet_ext.pool_linear.default
    torch.library.opcheck(op, (x.contiguous(memory_format=torch.channels_last), weight, bias))
    torch.library.opcheck(op, (x, weight, None))
    torch.library.opcheck(op, (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()))
    torch.library.opcheck(torch.ops.regnet_ext.pool_linear_backward.default,
                          (torch.randn(3, 7), x.detach().contiguous(memory_format=torch.channels_last),
                           weight.detach()))


def _head_calls(model, x):
    with torch.profiler.profile() as prof:
        model(x)
    return sum(e.count for e in prof.key_averages() if e.key == "regnet_ext::pool_linear")


def _timm_regnet():
    timm = pytest.importorskip("timm")
    return timm.create_model("regnety_004")


@pytest.mark.parametrize("build", [lambda: regnet("RegNetX-400MF"), _timm_regnet], ids=["ours", "timm"])
def test_fuse_swaps_the_head_and_it_matches_stock_only_where_it_applies(build):
    stock = randomize(build()).eval()
    keys = list(stock.state_dict())
    stock_fc = stock.head.fc
    model, report = fuse(copy.deepcopy(stock), report=True)
    assert ("head", type(stock.head).__name__, "FusedHead") in report.swapped
    assert ("head.fc", "Linear", "FusedLinear") in report.swapped
    assert isinstance(model.head, FusedHead) and isinstance(model.head.fc, FusedLinear)
    assert list(model.state_dict()) == keys
    x = images(3, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = stock(x)
        assert _head_calls(model, x) == 1
        assert_rel_close(model(x), expected, 1e-5, "fused model with its head in pool_linear")
        assert_rel_close(pickled_copy(model)(x), expected, 1e-5, "pickled fused model")
        assert _head_calls(model.double(), x.double()) == 0  # float64: the stock head
        model.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _head_calls(model, x) == 0
    restored = unfuse(model)
    assert type(restored.head) is type(stock.head) and type(restored.head.fc) is nn.Linear
    assert list(restored.state_dict()) == keys


@pytest.mark.parametrize("build", [lambda: regnet("RegNetY-400MF"), _timm_regnet], ids=["ours", "timm"])
def test_training_steps_through_the_head_match_stock(build):
    # float32: the dtype in which the fused head takes the operator (gradients included).
    stock = randomize(build()).train()
    model = fuse(copy.deepcopy(stock))
    features = torch.randn(4, stock.head.fc.in_features, 5, 5, generator=torch.Generator().manual_seed(2))
    features = features.contiguous(memory_format=torch.channels_last)
    stock_opt, opt = (torch.optim.SGD(m.head.parameters(), lr=0.1, momentum=0.9) for m in (stock, model))
    input_grads = {"stock": [], "fused": []}
    for _ in range(3):
        for kind, m, o in (("stock", stock, stock_opt), ("fused", model, opt)):
            o.zero_grad()
            x = features.clone().requires_grad_()
            m.head(x).square().mean().backward()
            o.step()
            input_grads[kind].append(x.grad)
    assert _head_calls(model.head, features.requires_grad_()) == 1
    for a, b in zip(input_grads["stock"], input_grads["fused"]):
        assert b.stride() == a.stride()
        assert_rel_close(b, a, 1e-5, "input gradient")
    for (name, a), (_, b) in zip(stock.head.named_parameters(), model.head.named_parameters()):
        assert_rel_close(b, a, 1e-5, f"head.{name} after 3 SGD steps")
    drop = model.head._modules.get("drop")
    if drop is not None:  # an active dropout keeps the stock forward
        drop.p = 0.5
        assert _head_calls(model.head, features) == 0
        assert _head_calls(model.head.eval(), features) == 1


def test_timm_head_keeps_pre_logits():
    stock = _timm_regnet().eval()
    model = fuse(copy.deepcopy(stock))
    features = torch.randn(2, stock.num_features, 3, 3)
    with torch.no_grad():
        assert_rel_close(model.forward_head(features, pre_logits=True),
                         stock.forward_head(features, pre_logits=True), 1e-6, "pre-logits")
        assert_rel_close(model.forward_head(features), stock.forward_head(features), 1e-5, "logits")


def test_a_head_with_max_pooling_stays_stock():
    model = regnet("RegNetX-400MF")
    model.head.pool = nn.AdaptiveMaxPool2d(1)
    model, report = fuse(model, report=True)
    assert not isinstance(model.head, FusedHead)
    assert ("head", "head pooling is not a global average") in report.notes
