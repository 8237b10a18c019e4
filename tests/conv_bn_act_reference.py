"""Plain-PyTorch reference for conv_bn_act (float64 by default), shared by its test files."""
import torch
import torch.nn.functional as F


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
