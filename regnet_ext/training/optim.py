"""SGD as PyTorch's fused kernel where it takes the parameters (one kernel per step for all of
them instead of several per parameter), else the default implementation: the same update,
rounded differently. fit() and the benchmarks' training steps build their optimizer here."""
import torch


def sgd(params, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD over ``params``, ``fused=True`` wherever ``fused_sgd_takes`` them."""
    params = list(params)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay, fused=True if fused_sgd_takes(params) else None)


def fused_sgd_takes(params):
    """PyTorch's own test (devices and dtypes with fused kernels), which SGD(fused=True) makes
    only at its first step, where a refusal would stop a run; False where this torch has no such
    test (it is private)."""
    try:
        from torch.optim.optimizer import _device_dtype_check_for_fused
    except ImportError:
        return False
    try:
        for p in params:
            _device_dtype_check_for_fused(p)
    except RuntimeError:
        return False
    return True
