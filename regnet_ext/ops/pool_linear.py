"""pool_linear: a classifier head (global average pool, then a linear layer) for CPU inference.

The fused heads call it (regnet_ext.nn.FusedHead) where it applies; it is public so that it can
be tested and benchmarked on its own. See csrc/cpu/pool_linear.cpp for why it exists."""
import torch


def pool_linear(x, weight, bias=None):
    """y = F.linear(x.mean((2, 3)), weight, bias) for a float32 or float64 CPU x [N, C, H, W]
    (any memory format; channels_last is the fast one); weight [classes, C], bias [classes] or
    None, of x's dtype. Returns [N, classes]. Inference only: no autograd."""
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu":
        raise ValueError("pool_linear: x must be a CPU tensor (the operator has a CPU kernel only), got "
                         f"{x.device if isinstance(x, torch.Tensor) else type(x).__name__}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        raise RuntimeError("pool_linear is for inference and has no autograd: call it under "
                           "torch.no_grad() or with tensors that do not require grad")
    return torch.ops.regnet_ext.pool_linear(x, weight, bias)


@torch.library.register_fake("regnet_ext::pool_linear")
def _pool_linear_fake(x, weight, bias):
    torch._check(x.dim() == 4, lambda: f"pool_linear: x must be 4-D, got {x.dim()}-D")
    torch._check(weight.dim() == 2 and weight.shape[1] == x.shape[1],
                 lambda: f"pool_linear: weight must have shape [classes, {x.shape[1]}], got {list(weight.shape)}")
    return x.new_empty((x.shape[0], weight.shape[0]))
