"""Plain-PyTorch reference for conv_bn_act (float64 by default), shared by its test files."""
import torch
import torch.nn.functional as F

from tolerances import assert_close_to_reference


def reference_conv_bn_act(x, weight, bn_weight, bn_bias, running_mean, running_var, *, bias=None,
                          stride=1, padding=None, groups=1, training=False, momentum=0.1, eps=1e-5,
                          relu=True, residual=None):
    """conv2d -> batch_norm -> (+ residual) -> (ReLU) with stock ops; updates running stats like BN."""
    pad = weight.shape[-1] // 2 if padding is None else padding
    z = F.conv2d(x, weight, bias, stride, pad, 1, groups)
    y = F.batch_norm(z, running_mean, running_var, bn_weight, bn_bias, training,
                     0.0 if momentum is None else momentum, eps)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def positional_args(case):
    """A make_case dict's tensors in the order of conv_bn_act's positional arguments."""
    return [case[k] for k in ("x", "weight", "bn_weight", "bn_bias", "running_mean", "running_var")]


def make_case(batch, c_in, c_out, size, kernel, stride, groups, *, dtype=torch.float32,
              channels_last=False, bias=True, residual=True, seed=0):
    """Fresh random inputs (never zeros) for one conv_bn_act call, as a dict of tensors."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, low=None):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return (t.abs() + low if low is not None else t).to(dtype)

    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    x = rand(batch, c_in, size, size)
    res = rand(batch, c_out, out, out) if residual else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        res = res.contiguous(memory_format=torch.channels_last) if res is not None else None
    return dict(
        x=x,
        weight=rand(c_out, c_in // groups, kernel, kernel) / (kernel * (c_in // groups) ** 0.5),
        bn_weight=rand(c_out, low=0.5),
        bn_bias=rand(c_out),
        running_mean=rand(c_out) * 0.1,
        running_var=rand(c_out, low=0.5),
        bias=rand(c_out) if bias else None,
        residual=res,
    )


def assert_bfloat16_within_plain_pytorch_error(op, case, *, stride=1, groups=1, training, relu, gradients=True):
    """Runs `op` (our conv_bn_act) on a bfloat16 case and checks y and, with `gradients`, the
    gradients of x, weight, bn_weight and bn_bias against the float64 reference, allowing a
    multiple of plain PyTorch's own bfloat16 error (tolerances.assert_close_to_reference)."""
    case64 = {k: (v.double() if v is not None else None) for k, v in case.items()}
    grad_y = None

    def run(fn, c):
        nonlocal grad_y
        leaves = [c[k].detach().requires_grad_() for k in ("x", "weight", "bn_weight", "bn_bias")]
        y = fn(*leaves, c["running_mean"].clone(), c["running_var"].clone(), bias=c["bias"], stride=stride,
               groups=groups, training=training, relu=relu, residual=c["residual"])
        if grad_y is None:
            grad_y = torch.randn(y.shape, dtype=torch.float64)
        return (y, *torch.autograd.grad(y, leaves, grad_y.to(y.dtype)))

    ours, plain, ref = run(op, case), run(reference_conv_bn_act, case), run(reference_conv_bn_act, case64)
    names = ("y", "grad x", "grad weight", "grad bn_weight", "grad bn_bias")[:None if gradients else 1]
    for name, got, p, r in zip(names, ours, plain, ref):
        assert got.dtype == torch.bfloat16
        assert_close_to_reference(got, r, plain_torch=p, name=f"bfloat16 {name}")
