"""The operators' fast entries from Python (csrc/python/fast_calls.cpp: conv_bn_act_eval for the
fused modules' CPU inference, conv_bn_act_train for their training forward): the same results,
gradients, errors and dispatcher behaviour as torch.ops' call, and torch.ops taking every call the
fast entries leave to it."""
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from regnet_ext import _C
from regnet_ext.nn import modules
from regnet_ext.ops.conv_bn_act import conv_bn_act_eval_call, conv_bn_act_train_call

_OP = torch.ops.regnet_ext.conv_bn_act_eval.default
_TRAIN_OP = torch.ops.regnet_ext.conv_bn_act_train.default


def _args(*, in_c=32, out_c=32, kernel=3, groups=4, stride=1, size=9, batch=2, bias=True, residual=True,
          channels_last=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_c, size, size, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out_c, in_c // groups, kernel, kernel, generator=g, dtype=dtype) * 0.2
    vec = [torch.randn(out_c, generator=g, dtype=dtype) for _ in range(3)] + \
        [torch.rand(out_c, generator=g, dtype=dtype) + 0.5]
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    res = torch.randn(batch, out_c, out, out, generator=g, dtype=dtype) if residual else None
    b = torch.randn(out_c, generator=g, dtype=dtype) if bias else None
    return [x, weight, b, vec[0], vec[1], vec[2], vec[3], res, stride, kernel // 2, groups, 1e-5, True]


@pytest.mark.parametrize("case", [
    dict(),
    dict(kernel=1, groups=1, in_c=24, out_c=40, residual=False),
    dict(kernel=1, groups=1, stride=2, size=14, bias=False),
    dict(groups=2, in_c=16, out_c=16, stride=2, size=13, residual=False),
    dict(channels_last=False),
    dict(dtype=torch.float64, groups=32, in_c=32, out_c=32),
    dict(dtype=torch.bfloat16),
])
def test_fast_call_equals_torch_ops(case):
    args = _args(**case)
    with torch.no_grad():
        expected = _OP(*args)
        got = _C.conv_bn_act_eval_call(*args)
    assert got is not NotImplemented
    assert got.dtype == expected.dtype and got.shape == expected.shape and got.stride() == expected.stride()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_parameters_take_the_fast_call():
    args = _args()
    args[1] = torch.nn.Parameter(args[1])
    args[3] = torch.nn.Parameter(args[3])
    with torch.no_grad():
        got = _C.conv_bn_act_eval_call(*args)
        expected = _OP(*args)
    assert got is not NotImplemented
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


class _Seen(torch.Tensor):
    calls = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_subclass_with_torch_function_goes_through_torch_ops():
    args = _args()
    expected = _OP(*args)
    args[0] = args[0].as_subclass(_Seen)
    _Seen.calls.clear()
    assert _C.conv_bn_act_eval_call(*args) is NotImplemented
    y = conv_bn_act_eval_call(*args)
    assert _OP in _Seen.calls
    torch.testing.assert_close(y.as_subclass(torch.Tensor), expected, rtol=0, atol=0)


def test_a_torch_function_mode_sees_the_call():
    seen = []

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    args = _args()
    with Mode():
        assert _C.conv_bn_act_eval_call(*args) is NotImplemented
        conv_bn_act_eval_call(*args)
    assert _OP in seen


def test_a_torch_dispatch_mode_sees_the_fast_call():
    seen = []

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    args = _args()
    with Mode():
        y = _C.conv_bn_act_eval_call(*args)
    assert y is not NotImplemented and _OP in seen


def test_the_profiler_records_the_fast_call():
    args = _args()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _C.conv_bn_act_eval_call(*args)
    assert "regnet_ext::conv_bn_act_eval" in {e.name for e in prof.events()}


def test_inference_mode_output_is_an_inference_tensor():
    args = _args()
    with torch.inference_mode():
        y = _C.conv_bn_act_eval_call(*args)
    assert y.is_inference()


@pytest.mark.parametrize("position, value", [(8, True), (8, 1.0), (8, np.int64(1)), (11, 1), (12, 1)])
def test_other_argument_types_are_left_to_torch_ops(position, value):
    args = _args()
    args[position] = value
    assert _C.conv_bn_act_eval_call(*args) is NotImplemented
    try:
        got = _OP(*args)
    except (RuntimeError, TypeError) as exc:  # torch.ops refuses this type: so must the fast path
        with pytest.raises(type(exc)):
            conv_bn_act_eval_call(*args)
    else:
        torch.testing.assert_close(conv_bn_act_eval_call(*args), got, rtol=0, atol=0)


@pytest.mark.parametrize("breakage", ["weight_shape", "bn_length", "residual_shape", "dtype", "even_kernel"])
def test_bad_input_raises_as_through_torch_ops(breakage):
    args = _args()
    if breakage == "weight_shape":
        args[1] = args[1][:, :3]
    elif breakage == "bn_length":
        args[3] = args[3][:5]
    elif breakage == "residual_shape":
        args[7] = args[7][:, :, :4]
    elif breakage == "dtype":
        args[4] = args[4].double()
    else:
        args[1] = torch.randn(32, 8, 2, 2)
    with pytest.raises(Exception) as through_ops:
        _OP(*args)
    with pytest.raises(type(through_ops.value)) as fast:
        _C.conv_bn_act_eval_call(*args)
    assert str(fast.value).splitlines()[0] == str(through_ops.value).splitlines()[0]


def test_wrong_argument_count_is_a_type_error():
    with pytest.raises(TypeError, match="13 positional arguments"):
        _C.conv_bn_act_eval_call(*_args()[:12])


def test_fused_modules_use_the_fast_entries():
    assert modules._EVAL_OP is conv_bn_act_eval_call and modules._TRAIN_OP is conv_bn_act_train_call


def _train_args(case, seed):
    """conv_bn_act_train's 11 arguments from _args' 13 (no running statistics), every tensor
    requiring grad, float64 where the case asks."""
    args = _args(seed=seed, **case)
    x, weight, bias, gamma, beta, _mean, _var, residual, stride, padding, groups, eps, relu = args
    tensors = [t.requires_grad_() if t is not None else None for t in (x, weight, bias, gamma, beta, residual)]
    return tensors[:5] + [tensors[5], stride, padding, groups, eps, relu]


@pytest.mark.parametrize("case", [
    dict(),
    dict(kernel=1, groups=1, in_c=24, out_c=40, residual=False, bias=False),
    dict(groups=2, in_c=16, out_c=16, stride=2, size=13, residual=False),
    dict(dtype=torch.float64, channels_last=False),
])
def test_fast_train_call_equals_torch_ops_with_gradients(case):
    ours, theirs = _train_args(case, 3), _train_args(case, 3)
    got = _C.conv_bn_act_train_call(*ours)
    expected = _TRAIN_OP(*theirs)
    assert isinstance(got, tuple) and len(got) == 4
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert got[0].grad_fn is not None
    g = torch.Generator().manual_seed(7)
    grad_y = torch.randn(got[0].shape, generator=g, dtype=got[0].dtype)
    for out in (got, expected):
        (out[0] * grad_y).sum().backward()
    for a, b in zip(ours, theirs):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_train_call_leaves_subclasses_and_wrong_counts_to_torch_ops():
    args = _train_args({}, 4)
    args[0] = args[0].detach().as_subclass(_Seen)
    _Seen.calls.clear()
    assert _C.conv_bn_act_train_call(*args) is NotImplemented
    conv_bn_act_train_call(*args)
    assert _TRAIN_OP in _Seen.calls
    with pytest.raises(TypeError, match="11 positional arguments"):
        _C.conv_bn_act_train_call(*args[:10])
