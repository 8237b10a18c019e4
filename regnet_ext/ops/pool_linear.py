"""pool_linear: a classifier head (global average pool, then a linear layer) as one CPU operator.

The fused heads call it (regnet_ext.nn.FusedHead) where it applies; it is public so that it can
be tested and benchmarked on its own. See csrc/cpu/pool_linear.cpp for why it exists. Autograd
is registered in C++ (csrc/autograd.cpp) through pool_linear_backward, which refuses to be
differentiated again."""
import torch
from torch._prims_common import suggest_memory_format

from ._cpu_only import require_cpu


def pool_linear(x, weight, bias=None):
    """y = F.linear(x.mean((2, 3)), weight, bias) for a float32 or float64 CPU x [N, C, H, W]
    (any memory format; channels_last is the fast one); weight [classes, C], bias [classes] or
    None, of x's dtype. Returns [N, classes]. Differentiable in x, weight and bias, once."""
    require_cpu("pool_linear", x)
    return torch.ops.regnet_ext.pool_linear(x, weight, bias)


def _check_shapes(x, weight):
    torch._check(x.dim() == 4, lambda: f"pool_linear: x must be 4-D, got {x.dim()}-D")
    torch._check(weight.dim() == 2 and weight.shape[1] == x.shape[1],
                 lambda: f"pool_linear: weight must have shape [classes, {x.shape[1]}], got {list(weight.shape)}")


@torch.library.register_fake("regnet_ext::pool_linear")
def _pool_linear_fake(x, weight, bias):
    _check_shapes(x, weight)
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.register_fake("regnet_ext::pool_linear_backward")
def _pool_linear_backward_fake(grad_y, x, weight):
    _check_shapes(x, weight)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=suggest_memory_format(x))
    return grad_x, weight.new_empty(weight.shape), weight.new_empty((weight.shape[0],))
