"""squeeze_excite: y = x * sigmoid(w2 . relu(w1 . mean_hw(x) + b1) + b2) as one fused operator.

The public function calls the operator, whose kernels check every argument, and turns a
refusal into a ValueError naming the argument. This module also registers the fake (meta)
kernels of the forward and backward operators, so torch.compile traces through them. Autograd is registered in C++
(csrc/autograd.cpp): the backward operator, which refuses to be differentiated again.
"""
import torch
from torch._prims_common import suggest_memory_format

from .._extension import require
from ._cpu_only import require_cpu, require_no_grad

require()

_ops = torch.ops.regnet_ext
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def squeeze_excite(x, w1, b1, w2, b2):
    """Fused squeeze-and-excitation.

    x: [N, C, H, W] (channels_last is the fast layout; the output keeps x's memory format).
    w1: [C_se, C] or [C_se, C, 1, 1], b1: [C_se]; w2: [C, C_se] or [C, C_se, 1, 1], b2: [C]
    (the 1x1-conv weights of an SE module can be passed as they are).
    All tensors share x's device and dtype (float32, float64, bfloat16 or float16; reduced
    precision accumulates in float32). Differentiable in x and all weights, once.
    """
    return _call_checked(_ops.squeeze_excite, x, w1, b1, w2, b2)


def squeeze_excite_(x, w1, b1, w2, b2):
    """squeeze_excite in place, for inference on the CPU: x is overwritten with the result and
    returned. Saves writing a fresh activation-sized buffer (what fused blocks use for their own
    conv output, which nobody else holds). No autograd: call it under torch.no_grad() or with
    tensors that do not require grad."""
    require_cpu("squeeze_excite_", x)
    require_no_grad("squeeze_excite_", x, w1, b1, w2, b2)
    _call_checked(_ops.squeeze_excite_, x, w1, b1, w2, b2)
    return x


def _call_checked(op, x, w1, b1, w2, b2):
    """op(x, w1, b1, w2, b2). Every kernel (and the fake kernel) checks all arguments; the
    Python checks, which name the argument in a ValueError, run only once the operator has
    refused them, since at batch 1 they cost 3.4 us of a 14 us call."""
    try:
        return op(x, w1, b1, w2, b2)
    except (RuntimeError, TypeError) as exc:
        error = exc
    _check_args(x, w1, b1, w2, b2)
    raise error


# ---- argument checks (shared by the public functions and the fake kernels) ---------------

def _check_same(t, name, x):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"squeeze_excite: {name} must be a Tensor, got {type(t).__name__}")
    if t.device != x.device:
        raise ValueError(f"squeeze_excite: {name} must be on x's device ({x.device}), got {t.device}")
    if t.dtype != x.dtype:
        raise ValueError(f"squeeze_excite: {name} must have x's dtype ({x.dtype}), got {t.dtype}")


def _check_weight(w, name, rows, cols, x):
    _check_same(w, name, x)
    shape = list(w.shape)
    if shape not in ([rows, cols], [rows, cols, 1, 1]):
        raise ValueError(f"squeeze_excite: {name} must have shape [{rows}, {cols}] or "
                         f"[{rows}, {cols}, 1, 1], got {shape}")


def _check_bias(b, name, length, x):
    _check_same(b, name, x)
    if list(b.shape) != [length]:
        raise ValueError(f"squeeze_excite: {name} must have shape [{length}], got {list(b.shape)}")


def _check_args(x, w1, b1, w2, b2):
    """Returns (C, C_se) after checking every argument against x."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"squeeze_excite: x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"squeeze_excite: x must be 4-D [N, C, H, W], got {x.dim()}-D "
                         f"shape {list(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"squeeze_excite: x must be float32, float64, bfloat16 or float16, got {x.dtype}")
    if x.shape[1] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"squeeze_excite: x needs at least one channel and one pixel, got "
                         f"shape {list(x.shape)}")
    if not isinstance(w1, torch.Tensor) or w1.dim() < 1 or w1.shape[0] < 1:
        raise ValueError("squeeze_excite: w1 must be a Tensor [C_se, C] with C_se >= 1, got "
                         f"{list(w1.shape) if isinstance(w1, torch.Tensor) else type(w1).__name__}")
    channels, hidden = x.shape[1], w1.shape[0]
    _check_weight(w1, "w1", hidden, channels, x)
    _check_bias(b1, "b1", hidden, x)
    _check_weight(w2, "w2", channels, hidden, x)
    _check_bias(b2, "b2", channels, x)
    return channels, hidden


def _like_x(x):
    """A new tensor with x's shape in x's memory format, exactly as the kernels allocate it."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device,
                       memory_format=suggest_memory_format(x))


# ---- fake kernels ------------------------------------------------------------------------

@torch.library.register_fake("regnet_ext::squeeze_excite")
def _squeeze_excite_fake(x, w1, b1, w2, b2):
    _check_args(x, w1, b1, w2, b2)
    return _like_x(x)


@torch.library.register_fake("regnet_ext::squeeze_excite_")
def _squeeze_excite_inplace_fake(x, w1, b1, w2, b2):
    _check_args(x, w1, b1, w2, b2)


@torch.library.register_fake("regnet_ext::squeeze_excite_backward")
def _squeeze_excite_backward_fake(grad_y, x, w1, b1, w2, b2):
    _check_args(x, w1, b1, w2, b2)
    _check_same(grad_y, "grad_y", x)
    if grad_y.shape != x.shape:
        raise ValueError(f"squeeze_excite_backward: grad_y must have x's shape {list(x.shape)}, "
                         f"got {list(grad_y.shape)}")
    # The weight gradients in the weights' own strides, as the kernels return them.
    return (_like_x(x), torch.empty_like(w1), b1.new_empty(b1.shape), torch.empty_like(w2),
            b2.new_empty(b2.shape))


# ---- autograd ----------------------------------------------------------------------------

# Autograd is registered in C++ (csrc/autograd.cpp): the backward operator recomputes the pooled
# means from x, and refuses to be differentiated again.
