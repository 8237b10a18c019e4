"""CPU inference fast path of FusedConvBNAct: fold BN into the conv once, not on every call.

conv_bn_act's eval operator folds the running statistics into the weights on every call (so a
fold can never be stale) and hands oneDNN a plain weight that it reorders into its blocked
layout on every call. For inference without autograd on the CPU, the fused module instead keeps
the folded weight already packed for oneDNN (as torch.compile's freezing does) and calls oneDNN's
conv with bias, residual add and ReLU fused as post-ops. The cache is keyed on the storage and
version counter of every tensor the fold reads, so an optimizer step, load_state_dict, .to() or
any in-place change recomputes it on the next call.

Used only where it applies: CPU, float32 or bfloat16 (residual: float32 only, the dtypes oneDNN
fuses), a channels_last input, no gradient needed, and not while torch.compile, torch.export or
torch.jit trace the model (they see the conv_bn_act operator, whose fold is part of the graph).
"""
import torch

_PACK = getattr(torch.ops.mkldnn, "_reorder_convolution_weight", None)


def _pointwise():
    return getattr(torch.ops.mkldnn, "_convolution_pointwise", None)


def applies(x, tensors, residual, dtype):
    """Whether the cached-fold path can run this call (see the module docstring)."""
    # First: under torch.compile nothing below may be traced (torch.backends is skipped).
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if x.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    if residual is not None and dtype != torch.float32:
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if _PACK is None or _pointwise() is None:
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, *tensors)):
        return False
    return True


def _key(dtype, tensors):
    return (dtype,) + tuple((t.data_ptr(), t._version, t.dtype) if t is not None else None
                            for t in tensors)


def fold(conv_weight, conv_bias, gamma, beta, running_mean, running_var, eps):
    """(weight', bias') with BN's running statistics folded in, computed in float32 at least."""
    acc = torch.promote_types(conv_weight.dtype, torch.float32)
    scale = gamma.to(acc) * torch.rsqrt(running_var.to(acc) + eps)
    bias = beta.to(acc) - running_mean.to(acc) * scale
    if conv_bias is not None:
        bias = bias + conv_bias.to(acc) * scale
    weight = conv_weight.to(acc) * scale.view(-1, 1, 1, 1)
    return weight, bias


class FoldedConv:
    """The cached folded and packed weights of one FusedConvBNAct."""

    def __init__(self):
        self._key = None
        self._weight = self._bias = None

    def __call__(self, conv, bn, x, residual, relu, stride, padding, groups, dtype):
        tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        key = _key(dtype, tensors) + (bn.eps, tuple(x.shape[1:]))
        if key != self._key:
            with torch.no_grad():
                weight, bias = fold(*tensors, bn.eps)
                weight = weight.to(dtype)
                self._weight = _PACK(weight, [padding] * 2, [stride] * 2, [1, 1], groups, list(x.shape))
                self._bias = bias.to(dtype)
                self._key = key
        x = x.to(dtype)
        pads, strides = [padding] * 2, [stride] * 2
        if residual is None:
            return _pointwise()(x, self._weight, self._bias, pads, strides, [1, 1], groups,
                                "relu" if relu else "none", [], "")
        return _pointwise().binary(x, residual.to(dtype), self._weight, self._bias, pads, strides,
                                   [1, 1], groups, "add", None, "relu" if relu else None, [], "")

    def __deepcopy__(self, memo):
        return FoldedConv()  # a cache: copies start empty (oneDNN's packed tensors cannot be copied)

    def __getstate__(self):
        return {"_key": None, "_weight": None, "_bias": None}
