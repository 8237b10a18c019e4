"""CPU inference fast paths: BN folded into the conv once, not on every call (FusedConvBNAct),
the classifier's weight packed for oneDNN once (FusedLinear); and the classifier head as one
pool_linear call (FusedHead, which also trains through it).

conv_bn_act's eval operator folds the running statistics into the weights on every call (so a
fold can never be stale) and hands oneDNN a plain weight that it reorders into its blocked
layout on every call. For inference without autograd on the CPU, the fused module instead keeps
the folded weight already packed for oneDNN (as torch.compile's freezing does) and calls oneDNN's
conv with bias, residual add and ReLU fused as post-ops. The cache is keyed on the storage and
version counter of every tensor the fold reads, so an optimizer step, load_state_dict, .to() or
any in-place change recomputes it on the next call.

FusedLinear does the same for nn.Linear: F.linear runs MKL's sgemm, which on the AMD CPU this was
measured on took 2-4x as long as oneDNN's matmul with a packed weight (RegNetY-400MF's
classifier, 8x440 -> 1000: 88 vs 38 us), the path torch.compile's freezing takes.

Layers whose conv one of our CPU kernels can compute (1x1 convs, the narrow-group and Winograd
grouped convs) call the operator instead, which keeps its own cache of the folded weight packed
for whichever kernel it chose (csrc/cpu/folded_weight_cache.h); under autocast, whose float32
parameters the operator would refuse beside bfloat16 activations, they hand it this module's
cached fold in the compute dtype (FoldedConv.through_operator).

Used only where it applies: CPU, float32 or bfloat16 (bfloat16 only on CPUs where oneDNN runs it,
and with a residual only for ungrouped convs, as csrc/cpu/onednn_fused_conv.h says), a
channels_last input, no gradient needed,
and not while torch.compile, torch.export or torch.jit trace the model (they see the conv_bn_act
operator, whose fold is part of the graph).
"""
import torch
from torch.nn.modules import module as module_impl

from ..ops.conv_bn_act import conv_bn_act_eval_call

_PACK = getattr(torch.ops.mkldnn, "_reorder_convolution_weight", None)
_POINTWISE = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
_PACK_LINEAR = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
# Whether this torch can run the paths at all (ATen built with oneDNN, the operators present).
_AVAILABLE = torch.backends.mkldnn.is_available() and _PACK is not None and _POINTWISE is not None
_LINEAR_AVAILABLE = torch.backends.mkldnn.is_available() and _PACK_LINEAR is not None and _LINEAR is not None


def _onednn_runs_bfloat16():
    """ATen's own check: oneDNN's bfloat16 kernels need AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT;
    on other CPUs its weight reorders refuse bfloat16 (and stock PyTorch takes another path)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


_DTYPES = (torch.float32, torch.bfloat16) if _onednn_runs_bfloat16() else (torch.float32,)
lean_blocks = True


def _plain_cpu_inference(x, dtype, available, tensors):
    """The tests both packed paths share: not being traced (under torch.compile nothing below
    may be traced: torch.backends is skipped), oneDNN available and enabled, a CPU input of a
    dtype oneDNN fuses, and no gradient needed by any of `tensors`."""
    # is_compiling first: Dynamo folds it to True and never meets _is_tracing (which it cannot
    # trace; torch.jit.is_tracing() adds an is_scripting() call per block).
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        return False
    # (x.is_cpu and torch.backends.mkldnn.enabled's getter: 0.15 us against 1.1 us; these tests
    # run on every block call.)
    if not available or dtype not in _DTYPES or not x.is_cpu or not torch._C._get_mkldnn_enabled():
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def residual_fusable(residual, dtype, groups):
    """Whether oneDNN's conv can add this residual: ATen fuses a 16-bit residual into ungrouped
    convs only (csrc/cpu/onednn_fused_conv.h)."""
    return residual is None or dtype == torch.float32 or groups == 1


def hooked(module):
    """Whether calling the module would run a forward hook (its own or a global one), which a
    path that bypasses the module would skip."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module_impl._global_forward_hooks
                or module_impl._global_forward_pre_hooks)


def applies(x, params, residual, dtype, groups=1):
    """Whether the cached-fold path can run this call (see the module docstring). It runs on
    every layer call, so the cheap tests come first."""
    if not residual_fusable(residual, dtype, groups):
        return False
    if not x.is_contiguous(memory_format=torch.channels_last):
        return False
    return _plain_cpu_inference(x, dtype, _AVAILABLE, (x, residual, *params))


def lean_block_inference(x, dtype):
    """Whether a fused block may call its layers' inference_call directly: applies()'s tests
    that do not depend on the layer, with autograd off and no global forward hook (which every
    module call would run), made once per block for its compute dtype (compute_dtype(x)). Each
    layer then tests only its own state. `lean_blocks = False` turns the path off for the
    process (benchmarks compare both ways)."""
    if not lean_blocks or torch.is_grad_enabled() or dtype not in _DTYPES or \
            module_impl._global_forward_hooks or module_impl._global_forward_pre_hooks:
        return False
    # Empty batches take the layers' module calls, which hand them to the stock modules.
    return x.is_contiguous(memory_format=torch.channels_last) and _plain_cpu_inference(x, dtype, _AVAILABLE, ()) \
        and x.numel() > 0


def linear_applies(x, weight, bias, dtype):
    """Whether the packed-weight path can run this nn.Linear call: as for applies(), with a
    contiguous 2-D input (a classifier's) in place of the channels_last one."""
    if x.dim() != 2 or not x.is_contiguous():
        return False
    return _plain_cpu_inference(x, dtype, _LINEAR_AVAILABLE, (x, weight, bias))


def pool_linear_applies(x, weight, bias):
    """Whether a fused classifier head can run as one pool_linear call: a float32 4-D CPU input
    (no autocast), weights of its dtype, and not being traced. (The operator has autograd.)"""
    if torch.compiler.is_compiling() or torch._C._is_tracing():
        return False
    if not x.is_cpu or x.dtype != torch.float32 or x.dim() != 4 or x.numel() == 0 or \
            torch.is_autocast_enabled("cpu"):
        return False
    return weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype)


def cast(t, dtype):
    """t in dtype (None stays None). t itself where it has the dtype already: Tensor.to would
    return it too, after a dispatcher round trip (this and the training operator's overload in
    place of its packet: 346 -> 306 us a training-forward call of a 384-channel layer on a 2x2
    input, Ice Lake VM)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _key(tensors):
    # A new storage (.to(), load_state_dict(assign=True), a dtype change) moves data_ptr; an
    # in-place write (optimizer step, copy_) bumps _version.
    return tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)


def fold(conv_weight, conv_bias, gamma, beta, running_mean, running_var, eps):
    """(weight', bias') with BN's running statistics folded in, computed in float32 at least."""
    acc = torch.promote_types(conv_weight.dtype, torch.float32)
    scale = gamma.to(acc) * torch.rsqrt(running_var.to(acc) + eps)
    bias = beta.to(acc) - running_mean.to(acc) * scale
    if conv_bias is not None:
        bias = bias + conv_bias.to(acc) * scale
    weight = conv_weight.to(acc) * scale.view(-1, 1, 1, 1)
    return weight, bias


class _OneEntryCache:
    """One entry (a tuple, key first), read and replaced whole, so threads serving the same model
    concurrently never pair one entry's weight with another's bias. Copies and pickles start
    empty (oneDNN's packed tensors cannot be copied)."""

    def __init__(self):
        self._entry = None

    @property
    def filled(self):
        return self._entry is not None

    def __deepcopy__(self, memo):
        return type(self)()

    def __getstate__(self):
        return {"_entry": None}


def _with_newest(packings, key, value, limit):
    """A new dict of `packings` plus key -> value, the oldest dropped beyond `limit`. New, and
    published whole: threads reading the old one never see it change."""
    kept = list(packings.items())
    return dict(kept[max(0, len(kept) - limit + 1):] + [(key, value)])


class FoldedConv(_OneEntryCache):
    """The cached folded weights of one FusedConvBNAct, packed for oneDNN once per input shape.

    oneDNN picks the packed weight's blocked layout for the call's input size, batch included (a
    packing made at batch 1 and used at batch 8 ran RegNetY-400MF's 1x1 convs 6x slower), so a
    model served at several batch sizes or resolutions keeps one packing per shape (up to
    MAX_SHAPES, oldest dropped first) instead of folding and packing again whenever it changes."""

    MAX_SHAPES = 4
    _identity_vectors = None  # through_operator's, made on its first call

    def _current(self, tensors, eps, dtype):
        """The entry (key, folded weight, bias, packings by shape) for these tensors, folded
        again where any of them changed. tensors: (conv weight, conv bias, gamma, beta, running
        mean, running var)."""
        key = _key(tensors) + (dtype, eps)
        entry = self._entry
        if entry is None or entry[0] != key:
            # Never inference tensors, even under inference_mode: the operator's own weight cache
            # (through_operator) cannot key them, and folded and packed them again on every call
            # (bfloat16 autocast, RegNetX-400MF at batch 1: 9.5 against 6.2 ms a forward).
            with torch.no_grad(), torch.inference_mode(False):
                weight, bias = fold(*tensors, eps)
                entry = self._entry = (key, weight.to(dtype), bias.to(dtype), {})
        return entry

    def __call__(self, tensors, eps, x, residual, relu, stride, padding, groups, dtype):
        """tensors: (conv weight, conv bias, gamma, beta, running mean, running var)."""
        key, folded, bias, packed_by_shape = self._current(tensors, eps, dtype)
        pads, strides = [padding] * 2, [stride] * 2
        shape = tuple(x.shape)  # batch included: oneDNN packs for one input shape
        weight = packed_by_shape.get(shape)
        if weight is None:  # (the caller, FusedConvBNAct, has checked x's channel count)
            weight = _PACK(folded, pads, strides, [1, 1], groups, list(x.shape))
            self._entry = (key, folded, bias, _with_newest(packed_by_shape, shape, weight, self.MAX_SHAPES))
        if x.dtype != dtype:
            x = x.to(dtype)
        if residual is None:
            return _POINTWISE(x, weight, bias, pads, strides, [1, 1], groups, "relu" if relu else "none", [], "")
        return _POINTWISE.binary(x, residual.to(dtype), weight, bias, pads, strides, [1, 1], groups, "add",
                                 None, "relu" if relu else None, [], "")

    def through_operator(self, tensors, eps, x, residual, relu, stride, padding, groups, dtype):
        """The same folded conv through conv_bn_act's eval operator, for layers where one of our
        kernels may run in `dtype` but the parameters have another (float32 under autocast): the
        operator takes every tensor in one dtype, so it gets the cached fold as the conv and its
        bias under an identity BN (scale 1 / sqrt(1 + 0), shift 0 + bias: exact), the same
        numbers the packed path multiplies, and picks its kernel (or oneDNN) as for any call."""
        _, folded, bias, _ = self._current(tensors, eps, dtype)
        ones, zeros = self._identity(bias)
        return conv_bn_act_eval_call(cast(x, dtype), folded, None, ones, bias, zeros, ones, cast(residual, dtype),
                                     stride, padding, groups, 0.0, relu)

    def _identity(self, like):
        """Ones and zeros like `like` (an identity BN's scale, variance and mean), made once."""
        identity = self._identity_vectors
        if identity is None or identity[0].shape != like.shape or identity[0].dtype != like.dtype:
            with torch.inference_mode(False):  # (see _current)
                identity = self._identity_vectors = (torch.ones_like(like), torch.zeros_like(like))
        return identity

    @property
    def shapes(self):
        """The input shapes (N, C, H, W) with a packed weight now."""
        return () if self._entry is None else tuple(self._entry[3])


class CastParameters(_OneEntryCache):
    """Tensors cast to a dtype once, not on every call (a fused SE's weights under autocast, as
    the lean block path calls it: no autograd), cast again whenever one of them changes."""

    def __call__(self, tensors, dtype):
        key = _key(tensors) + (dtype,)
        entry = self._entry
        if entry is None or entry[0] != key:
            with torch.no_grad():
                entry = self._entry = (key, tuple(cast(t, dtype) for t in tensors))
        return entry[1]


class PackedLinear(_OneEntryCache):
    """The cached oneDNN-packed weight (and bias in the compute dtype) of one FusedLinear, packed
    once per batch size: oneDNN packs for one, and RegNetY-400MF's classifier packed at batch 1
    took 145 us at batch 8 against 102 us packed at 8 (F.linear: 122 us). Up to MAX_BATCHES
    packings, the oldest dropped first."""

    MAX_BATCHES = 4

    def __call__(self, weight, bias, x, dtype):
        key = _key((weight, bias)) + (dtype,)
        entry = self._entry
        if entry is None or entry[0] != key:
            entry = self._entry = (key, None if bias is None else bias.to(dtype), {})
        _, bias, packed_by_batch = entry
        batch = x.shape[0]
        packed = packed_by_batch.get(batch)
        if packed is None:
            with torch.no_grad():
                packed = _PACK_LINEAR(weight.to(dtype), batch)
            self._entry = (key, bias, _with_newest(packed_by_batch, batch, packed, self.MAX_BATCHES))
        return _LINEAR(x.to(dtype), packed, bias, "none", [], "")

    @property
    def batches(self):
        """The batch sizes with a packed weight now."""
        return () if self._entry is None else tuple(self._entry[2])
