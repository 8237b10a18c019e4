"""The Python-side refusals shared by the operators with a CPU kernel only (pool_linear) and the
CPU inference-only ones without autograd (conv_pair_relu, squeeze_excite_)."""
import torch


def require_cpu(op, x):
    """A ValueError naming x unless it is a CPU tensor."""
    if not isinstance(x, torch.Tensor) or x.device.type != "cpu":
        raise ValueError(f"{op}: x must be a CPU tensor (the operator has a CPU kernel only), got "
                         f"{x.device if isinstance(x, torch.Tensor) else type(x).__name__}")


def require_no_grad(op, *tensors):
    """A RuntimeError where autograd would have to record the call."""
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        raise RuntimeError(f"{op} is for inference and has no autograd: call it under torch.no_grad() "
                           "or with tensors that do not require grad")
