"""conv_bn_act: y = act(BN(conv2d(x, weight, bias)) + residual) as one fused operator.

The public function checks its arguments (ValueError naming the argument), picks the eval or
training operator, and in training updates the running statistics in place exactly as
nn.BatchNorm2d does. This module also registers the fake (meta) kernels, so torch.compile traces
through the operators; their autograd is registered in C++ (csrc/autograd.cpp).
"""
import torch

from .. import _C
from .._extension import require
from ._tracing import quiet_shape_checks_under_trace

require()

_ops = torch.ops.regnet_ext
_EVAL = _ops.conv_bn_act_eval.default
_EVAL_UNCACHED = _ops.conv_bn_act_eval.uncached
_TRAIN = _ops.conv_bn_act_train.default
# The overload itself: calling it skips the packet's overload resolution.
UPDATE_RUNNING_STATS = _ops.conv_bn_act_update_running_stats.default
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@quiet_shape_checks_under_trace
def conv_bn_act(x, weight, bn_weight, bn_bias, running_mean, running_var, *, bias=None,
                stride=1, padding=None, groups=1, training=False, momentum=0.1, eps=1e-5,
                num_batches_tracked=None, relu=True, residual=None):
    """Fused conv2d + BatchNorm2d (+ residual) (+ ReLU).

    x: [N, C_in, H, W] (channels_last is the fast layout; the output keeps x's memory format).
    weight: [C_out, C_in/groups, K, K], K odd; padding defaults to K // 2.
    training=False: BN with running_mean/running_var, folded into the conv.
    training=True: BN with batch statistics; running_mean/running_var (and num_batches_tracked)
    are updated in place as nn.BatchNorm2d does (momentum=None: cumulative average, which needs
    num_batches_tracked). They may both be None (no running statistics tracked), and may keep
    their own dtype (float32 under autocast, as stock BN's do).
    relu: apply ReLU after the residual add; residual: [N, C_out, H_out, W_out] or None.
    """
    args = (x, weight, bn_weight, bn_bias, running_mean, running_var, bias, stride, padding,
            groups, training, momentum, num_batches_tracked, residual)
    if not _obviously_wrong(*args):
        try:
            return _run(*args, eps, relu)
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError) as exc:
            error = exc
    else:
        error = None
    # The kernels check every tensor argument; the Python checks, which name the argument in a
    # ValueError, run only once the operator has refused them (at batch 1 they cost ~10 us of a
    # training call that takes 0.3 ms).
    _check_all(*args)
    _check_eps(eps)
    raise error or AssertionError("conv_bn_act: arguments refused without a reason")


def _obviously_wrong(x, weight, bn_weight, bn_bias, running_mean, running_var, bias, stride,
                     padding, groups, training, momentum, num_batches_tracked, residual):
    """What the operators cannot see, or would see only after a side effect: a missing pair of
    running statistics, and momentum=None without a batch counter."""
    if not training:
        return running_mean is None or running_var is None
    return ((running_mean is None) != (running_var is None)
            or (momentum is None and num_batches_tracked is None and running_mean is not None))


def _run(x, weight, bn_weight, bn_bias, running_mean, running_var, bias, stride, padding, groups,
         training, momentum, num_batches_tracked, residual, eps, relu):
    padding = weight.shape[2] // 2 if padding is None else int(padding)
    stride, groups, eps, relu = int(stride), int(groups), float(eps), bool(relu)
    if not training:
        return conv_bn_act_eval_call(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                     residual, stride, padding, groups, eps, relu)
    y, _conv_out, mean, var = conv_bn_act_train_call(x, weight, bias, bn_weight, bn_bias, residual,
                                                     stride, padding, groups, eps, relu)
    if running_mean is not None:
        with torch.no_grad():
            if num_batches_tracked is not None:
                num_batches_tracked.add_(1)
            count = y.shape[0] * y.shape[2] * y.shape[3]
            try:
                UPDATE_RUNNING_STATS(
                    running_mean, running_var, mean, var, num_batches_tracked, count,
                    0.0 if momentum is None else float(momentum), momentum is None)
            except (RuntimeError, TypeError):
                if num_batches_tracked is not None:  # a refused call changes nothing
                    num_batches_tracked.sub_(1)
                raise
        save_after_running_stats_update(y)
    return y


def save_after_running_stats_update(y):
    """Call after updating running statistics from the training operator's output y: under
    saved-tensor hooks (torch.utils.checkpoint's non-reentrant mode), saves one empty tensor for
    backward (_SaveAfterRunningStatsUpdate says why). Elsewhere, and while torch.compile or
    jit.trace trace (which record no Python autograd Function), nothing."""
    # (Compiling first: Dynamo cannot trace the hooks query, and must not reach it.)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling() and not torch._C._is_tracing() and \
            _saved_tensor_hooks_active():
        _SaveAfterRunningStatsUpdate.apply(y)


# Whether saved-tensor hooks are set (torch.autograd.graph.saved_tensors_hooks, which
# non-reentrant checkpointing uses): torch's private query, looked up once; a torch without it
# gets the behaviour from before this fix (one update less in a checkpointed segment's recompute).
_top_saved_tensor_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


def _saved_tensor_hooks_active():
    return _top_saved_tensor_hooks is not None and _top_saved_tensor_hooks(False) is not None


class _SaveAfterRunningStatsUpdate(torch.autograd.Function):
    """Saves one empty tensor for backward, after a running-statistics update.

    Non-reentrant checkpointing recomputes a segment in backward only until it has saved as many
    tensors as the forward did (early stop). The training operator saves its tensors before the
    running-statistics update, which runs in Python after it, so the segment's last such call
    skipped its second update, where stock BN (which updates inside its own operator) updates
    twice, in the forward and in the recomputation. This save comes after the update. Its output
    is dropped: nothing unpacks it."""

    @staticmethod
    def forward(ctx, y):
        marker = y.new_empty(0)
        ctx.save_for_backward(marker)
        return marker

    @staticmethod
    def backward(ctx, grad):
        return None


def _through_fast_entry(entry, op, doc, traced_op=None):
    """op(*args) by `entry`, its C entry (csrc/python/fast_calls.cpp: the dispatcher's typed call,
    a few us less than torch.ops' boxed one), or by op itself where only torch.ops handles the
    call (__torch_function__, other argument types: the entry returns NotImplemented) and while
    torch.compile or jit.trace traces (they must see torch.ops' call; traced_op, where given, is
    what a trace records)."""
    traced_op = traced_op or op

    def call(*args):
        if torch.compiler.is_compiling() or torch._C._is_tracing():
            return traced_op(*args)
        out = entry(*args)
        return op(*args) if out is NotImplemented else out

    call.__doc__ = doc
    return call


# A trace records the eval operator without the CPU's folded-weight cache: the weights it is given
# may be computed in the graph (a cast), and compiled code reuses their buffers for other layers'
# values without bumping a version (library.cpp). Callers whose weight and BN tensors are a
# module's own parameters and buffers (graph inputs or frozen constants) trace the cached one.
conv_bn_act_eval_call = _through_fast_entry(
    _C.conv_bn_act_eval_call, _EVAL,
    "regnet_ext::conv_bn_act_eval(*args), the schema's 13 arguments positional (_through_fast_entry); "
    "a trace records conv_bn_act_eval.uncached.", traced_op=_EVAL_UNCACHED)
conv_bn_act_eval_of_own_tensors_call = _through_fast_entry(
    _C.conv_bn_act_eval_call, _EVAL,
    "conv_bn_act_eval_call for a module's own parameters and buffers: a trace records the cached "
    "conv_bn_act_eval.")
conv_bn_act_train_call = _through_fast_entry(
    _C.conv_bn_act_train_call, _TRAIN,
    "regnet_ext::conv_bn_act_train(*args), 11 arguments positional; its 4 outputs, with autograd "
    "(_through_fast_entry).")


# ---- argument checks (shared by the public function and the fake kernels) ----------------

def _check_all(x, weight, bn_weight, bn_bias, running_mean, running_var, bias, stride, padding,
               groups, training, momentum, num_batches_tracked, residual):
    """Raises a ValueError naming the first bad argument of a public conv_bn_act call."""
    _check_conv_args(x, weight, bias, bn_weight, bn_bias, residual, stride, padding, groups)
    if not training and (running_mean is None or running_var is None):
        raise ValueError("conv_bn_act: training=False needs running_mean and running_var "
                         "(eval-mode BN normalises with the running statistics)")
    if running_mean is None and running_var is None:
        return
    if running_mean is None or running_var is None:
        raise ValueError("conv_bn_act: running_mean and running_var must both be given or both be None")
    stats_like = x if not training else None  # training keeps the statistics' own dtype
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var")):
        _check_tensor(t, name)
        if t.device != x.device:
            raise ValueError(f"conv_bn_act: {name} must be on x's device ({x.device}), got {t.device}")
        if stats_like is not None:
            _check_tensor(t, name, stats_like)
        if t.dim() != 1 or t.shape[0] != weight.shape[0]:
            raise ValueError(f"conv_bn_act: {name} must have shape [{weight.shape[0]}], got {list(t.shape)}")
    if training and momentum is None and num_batches_tracked is None:
        raise ValueError("conv_bn_act: momentum=None (cumulative average) needs num_batches_tracked")
    if training:
        for t, name in ((running_mean, "running_mean"), (running_var, "running_var")):
            if t.dtype not in _FLOAT_DTYPES:
                raise ValueError(f"conv_bn_act: {name} must be float32, float64, bfloat16 or float16, "
                                 f"got {t.dtype}")
        if running_var.dtype != running_mean.dtype:
            raise ValueError(f"conv_bn_act: running_var must have running_mean's dtype ({running_mean.dtype}), "
                             f"got {running_var.dtype}")
    if training and num_batches_tracked is not None:
        _check_batch_counter(num_batches_tracked, running_mean)
    if training and (not running_mean.is_contiguous() or not running_var.is_contiguous()):
        raise ValueError("conv_bn_act: running_mean and running_var must be contiguous (they are "
                         "updated in place)")


def _check_batch_counter(n, running_mean):
    """num_batches_tracked: a one-element counter (nn.BatchNorm2d's is an int64 scalar) that
    add_(1) can count in, on the running statistics' device."""
    if not isinstance(n, torch.Tensor):
        raise ValueError(f"conv_bn_act: num_batches_tracked must be a Tensor, got {type(n).__name__}")
    if n.dtype == torch.bool or n.is_complex():
        raise ValueError(f"conv_bn_act: num_batches_tracked must be an integer or floating tensor "
                         f"(torch.int64 as nn.BatchNorm2d's), got {n.dtype}")
    if n.device != running_mean.device:
        raise ValueError(f"conv_bn_act: num_batches_tracked must be on running_mean's device "
                         f"({running_mean.device}), got {n.device}")
    if n.numel() != 1:
        raise ValueError(f"conv_bn_act: num_batches_tracked must have one element, got shape {list(n.shape)}")


def _check_eps(eps):
    # Stock batch_norm refuses a negative eps; NaN would make every output NaN (0 behind ReLU).
    if not float(eps) >= 0:
        raise ValueError(f"conv_bn_act: eps must be a non-negative number, got {eps}")


def _check_same_device(op, x, **tensors):
    """A fake kernel's device check: the dispatcher sends a call with any meta argument to the
    fake kernel, which must refuse real tensors mixed in rather than return an empty result."""
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: {name} must be on the device of the other arguments ({x.device}), "
                             f"got {t.device}")


def _check_tensor(t, name, like=None):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"conv_bn_act: {name} must be a Tensor, got {type(t).__name__}")
    if like is not None:
        if t.device != like.device:
            raise ValueError(f"conv_bn_act: {name} must be on x's device ({like.device}), got {t.device}")
        if t.dtype != like.dtype:
            raise ValueError(f"conv_bn_act: {name} must have x's dtype ({like.dtype}), got {t.dtype}")


def _check_vector(t, name, x, length):
    _check_tensor(t, name, x)
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"conv_bn_act: {name} must have shape [{length}], got {list(t.shape)}")


def _check_conv_args(x, weight, bias, bn_weight, bn_bias, residual, stride, padding, groups):
    """Validates everything but the running statistics; returns the kernel size."""
    _check_tensor(x, "x")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"conv_bn_act: x must be float32, float64, bfloat16 or float16, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"conv_bn_act: x must be 4-D [N, C, H, W], got shape {list(x.shape)}")
    _check_tensor(weight, "weight", x)
    if weight.dim() != 4:
        raise ValueError(f"conv_bn_act: weight must be 4-D [C_out, C_in/groups, K, K], got shape {list(weight.shape)}")
    if int(groups) < 1 or int(stride) < 1 or (padding is not None and int(padding) < 0):
        raise ValueError(f"conv_bn_act: need groups >= 1, stride >= 1, padding >= 0; got "
                         f"groups={groups}, stride={stride}, padding={padding}")
    c_in, c_out, k = x.shape[1], weight.shape[0], weight.shape[2]
    if c_in % groups:
        raise ValueError(f"conv_bn_act: x's channels ({c_in}) must be divisible by groups ({groups})")
    if c_out % groups:
        raise ValueError(f"conv_bn_act: weight's output channels ({c_out}) must be divisible by groups ({groups})")
    if weight.shape[1] != c_in // groups or weight.shape[3] != k:
        raise ValueError(f"conv_bn_act: weight must have shape [C_out, C_in/groups={c_in // groups}, K, K] "
                         f"(x has {c_in} channels, groups={groups}), got {list(weight.shape)}")
    if k % 2 == 0:
        raise ValueError(f"conv_bn_act: weight's kernel size must be odd, got {k}")
    if x.numel() == 0 or c_out == 0:  # empty H or W too: stock conv2d refuses them
        raise ValueError(f"conv_bn_act: x and weight must not be empty, got shapes {list(x.shape)} and "
                         f"{list(weight.shape)}")
    pad = k // 2 if padding is None else int(padding)
    if pad > 2**31 - 1:  # as the kernels: keeps H + 2 * padding from overflowing
        raise ValueError(f"conv_bn_act: padding must be at most 2^31 - 1, got {pad}")
    h_out, w_out = _out_size(x.shape[2], k, stride, pad), _out_size(x.shape[3], k, stride, pad)
    if h_out < 1 or w_out < 1:
        raise ValueError(f"conv_bn_act: x's spatial size {list(x.shape[2:])} is smaller than the kernel ({k}) "
                         f"with padding {pad}")
    if bias is not None:
        _check_vector(bias, "bias", x, c_out)
    _check_vector(bn_weight, "bn_weight", x, c_out)
    _check_vector(bn_bias, "bn_bias", x, c_out)
    if residual is not None:
        _check_tensor(residual, "residual", x)
        expected = [x.shape[0], c_out, h_out, w_out]
        if list(residual.shape) != expected:
            raise ValueError(f"conv_bn_act: residual must have shape {expected}, got {list(residual.shape)}")
    return k


def _out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def _output_format(x):
    """Same rule as output_memory_format in csrc/cpu/conv_bn_act_cpu.h."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _out_shape(x, weight, stride, padding):
    k = weight.shape[2]
    return (x.shape[0], weight.shape[0], _out_size(x.shape[2], k, stride, padding),
            _out_size(x.shape[3], k, stride, padding))


# ---- fake kernels ---------------------------------------------------------------------------

@torch.library.register_fake("regnet_ext::conv_bn_act_eval.uncached")
@torch.library.register_fake("regnet_ext::conv_bn_act_eval")
def _eval_fake(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual, stride,
               padding, groups, eps, relu):
    _check_conv_args(x, weight, bias, bn_weight, bn_bias, residual, stride, padding, groups)
    _check_eps(eps)
    c_out = weight.shape[0]
    _check_vector(running_mean, "running_mean", x, c_out)
    _check_vector(running_var, "running_var", x, c_out)
    return torch.empty(_out_shape(x, weight, stride, padding), dtype=x.dtype, device=x.device,
                       memory_format=_output_format(x))


@torch.library.register_fake("regnet_ext::conv_bn_act_train")
def _train_fake(x, weight, bias, bn_weight, bn_bias, residual, stride, padding, groups, eps, relu):
    _check_conv_args(x, weight, bias, bn_weight, bn_bias, residual, stride, padding, groups)
    _check_eps(eps)
    shape = _out_shape(x, weight, stride, padding)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_output_format(x))
    conv_out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    stats = dict(dtype=_acc_dtype(x.dtype), device=x.device)
    return y, conv_out, torch.empty(shape[1], **stats), torch.empty(shape[1], **stats)


@torch.library.register_fake("regnet_ext::conv_bn_act_update_running_stats")
def _update_running_stats_fake(running_mean, running_var, batch_mean, batch_var, num_batches_tracked,
                               count, momentum, cumulative):
    _check_same_device("conv_bn_act_update_running_stats", running_mean, running_var=running_var,
                       batch_mean=batch_mean, batch_var=batch_var, num_batches_tracked=num_batches_tracked)
    return None


@torch.library.register_fake("regnet_ext::conv_bn_act_backward")
def _backward_fake(grad_y, y, x, weight, bias, bn_weight, conv_out, mean, var, stride, padding,
                   groups, eps, relu, training, input_grad, param_grads, residual_grad=True):
    _check_conv_args(x, weight, bias, bn_weight, bn_weight, None, stride, padding, groups)
    _check_eps(eps)
    _check_same_device("conv_bn_act_backward", x, grad_y=grad_y, y=y, conv_out=conv_out, mean=mean, var=var)
    fmt = _output_format(x)
    none = dict(dtype=x.dtype, device=x.device)
    grad_x = torch.empty(x.shape, memory_format=fmt, **none) if input_grad else torch.empty(0, **none)
    c_out = weight.shape[0]
    # In the weight's layout, as the Parameter's .grad will be (csrc/tensor_layout.h).
    grad_w = torch.empty_like(weight, **none) if param_grads else torch.empty(0, **none)
    grad_b = torch.empty(c_out, **none) if (param_grads and bias is not None) else torch.empty(0, **none)
    grad_gamma = torch.empty(c_out, **none) if param_grads else torch.empty(0, **none)
    grad_beta = torch.empty(c_out, **none) if param_grads else torch.empty(0, **none)
    grad_residual = (torch.empty(_out_shape(x, weight, stride, padding), memory_format=fmt, **none)
                     if residual_grad else torch.empty(0, **none))
    return grad_x, grad_w, grad_b, grad_gamma, grad_beta, grad_residual


# ---- autograd -------------------------------------------------------------------------------
# Registered in C++ (csrc/autograd.cpp): both forward operators differentiate through
# conv_bn_act_backward (in eval `mean`/`var` are the running statistics, in training the batch
# statistics and z the saved conv output), which refuses a second differentiation.
