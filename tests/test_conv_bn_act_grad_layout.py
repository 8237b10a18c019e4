"""The weight gradient comes back in its weight's memory layout, on every CPU backend and path,
so that AccumulateGrad neither copies nor adds strided (and the fake kernel's promise holds)."""
import pytest
import torch

from conv_bn_act_reference import make_case
from regnet_ext.ops import conv_bn_act

# (batch, c_in, c_out, size, kernel, stride, groups): aten grouped 3x3 (small), our own weight
# gradient (8 per group, 56px), strided and plain 1x1.
SHAPES = [(1, 16, 16, 7, 3, 1, 2), (1, 16, 16, 56, 3, 2, 2), (2, 8, 16, 6, 1, 2, 1), (2, 8, 16, 6, 1, 1, 1)]


@pytest.mark.parametrize("backend", ["mixed", "aten", "tiles"])
@pytest.mark.parametrize("weight_format", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_weight_gradient_keeps_the_weight_layout(shape, training, weight_format, backend, monkeypatch):
    if backend != "mixed":
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", backend)
    c = make_case(*shape, channels_last=True, residual=False)
    stride, groups = shape[5], shape[6]

    def weight_grad(weight, grad_y):
        weight = weight.detach().requires_grad_()
        y = conv_bn_act(c["x"], weight, c["bn_weight"], c["bn_bias"], c["running_mean"], c["running_var"],
                        bias=c["bias"], stride=stride, groups=groups, training=training)
        return torch.autograd.grad(y, weight, grad_y)[0]

    weight = c["weight"].contiguous(memory_format=weight_format)
    out = (shape[3] + 2 * (shape[4] // 2) - shape[4]) // stride + 1
    grad_y = torch.randn(shape[0], shape[2], out, out).contiguous(memory_format=torch.channels_last)
    grad_w = weight_grad(weight, grad_y)
    assert grad_w.stride() == weight.stride()
    torch.testing.assert_close(grad_w, weight_grad(weight.contiguous(), grad_y), rtol=1e-5, atol=1e-6)
