"""Our kernels pack the weight by reading it through its strides (no contiguous copy first): a
channels_last or otherwise strided weight gives the same outputs and gradients as a contiguous
one, on every path that packs (8 and 16 per group, Winograd 32 and 64 per group, the wide-group
tiles at 32 and 64 per group, whose packing transposes dense weights in registers and reads
others element by element, the generic tiles), in eval and training."""
import pytest
import torch

from conv_bn_act_reference import make_case
from regnet_ext.ops import conv_bn_act

# (batch, c_in, c_out, size, kernel, stride, groups): narrow 8 and 16 per group, Winograd 32 and
# 64 per group, and a dense 3x3 for the generic tiles.
SHAPES = [(2, 16, 16, 9, 3, 1, 2), (1, 32, 32, 8, 3, 2, 2), (2, 64, 64, 8, 3, 1, 2),
          (1, 128, 128, 6, 3, 1, 2), (2, 8, 12, 7, 3, 1, 1)]


def strided_copy(weight):
    """The same values in a non-contiguous layout: every other element of a wider buffer."""
    wide = torch.empty(*weight.shape[:3], weight.shape[3] * 2, dtype=weight.dtype)
    view = wide[..., ::2]
    view.copy_(weight)
    return view


@pytest.mark.parametrize("backend", ["mixed", "tiles", "wide_group"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_weight_layout_does_not_change_results(shape, training, backend, monkeypatch):
    if backend != "mixed":
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", backend)
    c = make_case(*shape, channels_last=True, residual=False, seed=sum(shape))
    stride, groups = shape[5], shape[6]

    def run(weight):
        weight = weight.detach().requires_grad_()
        x = c["x"].detach().requires_grad_()
        y = conv_bn_act(x, weight, c["bn_weight"], c["bn_bias"], c["running_mean"].clone(),
                        c["running_var"].clone(), bias=c["bias"], stride=stride, groups=groups,
                        training=training)
        grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
        gx, gw = torch.autograd.grad(y, (x, weight), grad_y)
        return y.detach(), gx, gw.contiguous()

    expected = run(c["weight"].contiguous())
    for layout in (c["weight"].contiguous(memory_format=torch.channels_last), strided_copy(c["weight"])):
        assert not layout.is_contiguous() or shape[4] == 1
        for got, want in zip(run(layout), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
