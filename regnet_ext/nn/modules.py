"""Fused modules that run RegNet layers on the regnet_ext operators.

Each fused module *holds the stock module's own children* (the nn.Conv2d and nn.BatchNorm2d
objects, the SE convs) under the names the stock module used, so Parameters, buffers,
state_dict keys and the optimizer's view of the model are unchanged by fusing. Only forward
differs: it calls conv_bn_act / squeeze_excite with those parameters.

BatchNorm semantics follow nn.BatchNorm2d exactly: batch statistics (and a running-stats update)
while the BN module is in training mode, running statistics folded into the conv otherwise. The
operator folds on every call, so the fold can never be stale after an optimizer step or a
load_state_dict; CPU inference without autograd keeps the fold cached instead, keyed on the
parameters' storage and version counters (folded_inference.py). FusedLinear (the classifier)
keeps its weight packed for oneDNN the same way.

Under autocast the operators run in autocast's dtype (the inputs and weights are cast, as
autocast does for conv2d); running statistics stay in their own dtype and are updated there.
Outside autocast an input of another dtype than the parameters is refused with a RuntimeError,
as stock conv2d refuses it (compute_dtype).

torch.fx's symbolic trace (torchvision's create_feature_extractor) records each fused module as
one call_module node, as it records a torch.nn layer (_fx_leaf_call).
"""
import torch
from torch import nn
from torch.fx import Proxy as _FxProxy
from torch.nn import functional as F

from .. import _C
from .._extension import (compiled_with_gemm_tiles_kernel, compiled_with_narrow_group_bf16_kernel,
                          compiled_with_narrow_group_kernel, compiled_with_winograd_kernel)
from ..ops import conv_bn_act, squeeze_excite, squeeze_excite_
from ..ops.conv_bn_act import (UPDATE_RUNNING_STATS, conv_bn_act_eval_call, conv_bn_act_eval_of_own_tensors_call,
                               conv_bn_act_train_call, save_after_running_stats_update)
from . import conv_pair, folded_inference
from .folded_inference import cast as _cast, hooked

_ops = torch.ops.regnet_ext
# The eval and training operators by their fast entries (ops/conv_bn_act.py; torch.ops while a
# trace runs).
_EVAL_OP = conv_bn_act_eval_call
_TRAIN_OP = conv_bn_act_train_call

# Attribute under which a fused module keeps the stock module it replaced (outside the module
# tree, so it adds nothing to state_dict/parameters and unfuse() can put it back).
_STOCK = "_stock_module"


def compute_dtype(x, param_dtype=None, who="fused module"):
    """The dtype a fused operator runs in: autocast's for x's device when autocast is on (and x
    is float32 or differs from the parameters: autocast casts every floating input but float64),
    x's own otherwise. An input of another dtype than the module's parameters (`param_dtype`)
    raises the RuntimeError stock conv2d does, naming `who`: outside autocast (the operators
    would otherwise run in the input's dtype, casting the parameters), and a float64 one under it
    (which autocast leaves as it is: stock layers then meet parameters it cast)."""
    dtype = x.dtype
    if dtype == torch.float32 or dtype != param_dtype:
        kind = _autocast_kind(x)
        if kind is not None and torch.is_autocast_enabled(kind):
            if dtype != torch.float64:
                return torch.get_autocast_dtype(kind)
            raise RuntimeError(
                f"{who}: input x is torch.float64 under torch.autocast({kind!r}), which casts no float64 "
                f"tensor, while the parameters are {param_dtype}; the stock model raises too: pass x as "
                f"{param_dtype} (autocast casts it to {torch.get_autocast_dtype(kind)})")
        if param_dtype is not None and dtype != param_dtype:
            raise RuntimeError(
                f"{who}: input x is {dtype} but the parameters are {param_dtype}; outside torch.autocast "
                f"the input must have the parameters' dtype, as for the stock model (x.to({param_dtype}), "
                f"or the model .to({dtype}))")
    return dtype


def _autocast_kind(x):
    """The autocast device type of x's device, or None where autocast has none (meta: asking
    torch.is_autocast_enabled about it raises)."""
    if x.is_cpu:
        return "cpu"  # (x.device builds a torch.device: 0.7 us)
    if x.is_meta:
        return None
    return x.device.type


def _fx_leaf_call(module, x, *args, **kwargs):
    """The call of a fused module that torch.fx's symbolic trace (torchvision's
    create_feature_extractor) records: one call_module node, as for a torch.nn layer (the tracer's
    leaf modules). Our forwards branch on the input's dtype, device and layout, which a symbolic
    trace cannot follow; the module runs its own forward when the traced graph calls it."""
    tracer = x.tracer
    if module is tracer.root:  # (its graph would call itself)
        raise TypeError(f"torch.fx cannot trace a {type(module).__name__} alone (its forward is one opaque call): "
                        "trace the model that holds it")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return tracer.create_proxy("call_module", tracer.path_of_module(module), (x, *args), kwargs)


def _is_channels_last(weight):
    """Whether a conv weight is channels_last as .to(memory_format=torch.channels_last) makes it
    (what nn.Conv2d reads): a 1x1 weight is contiguous in both formats, its strides tell."""
    if not weight.is_contiguous(memory_format=torch.channels_last):
        return False
    return not weight.is_contiguous() or weight.stride(3) != 1


def _all_of_dtype(dtype, *tensors):
    # A plain loop: all() over a generator cost 2.4 us for a layer's 7 tensors, this 1.1 us.
    for t in tensors:
        if t is not None and t.dtype != dtype:
            return False
    return True


def conv_geometry(conv):
    """(stride, padding, groups) of a square, odd-kernel nn.Conv2d as the operator takes them."""
    k = conv.kernel_size[0]
    if isinstance(conv.padding, str):
        padding = 0 if conv.padding == "valid" else k // 2
    else:
        padding = conv.padding[0]
    return conv.stride[0], padding, conv.groups


class _HoldsStock(nn.Module):
    """Base of the fused modules: remembers the stock module for unfuse()."""

    def _remember_stock(self, stock):
        # Stored in __dict__, not as a child: invisible to state_dict, parameters() and .to().
        self.__dict__[_STOCK] = stock
        if stock is not None:
            self.training = stock.training

    def stock_module(self):
        """The stock module this one replaced, with its parameter-holding children set to the ones
        this module holds now (so replacements made after fusing, e.g. by
        load_state_dict(assign=True) or SyncBatchNorm conversion, carry over) and its train/eval
        mode set to this module's."""
        stock = self.__dict__.get(_STOCK)
        if stock is None:
            raise RuntimeError(f"{type(self).__name__} was built without a stock module to restore")
        for path, leaf in self.named_modules():
            if not path:
                continue
            if isinstance(leaf, _HoldsStock):  # a fused child (FusedHead's fc): its own stock one
                if leaf.__dict__.get(_STOCK) is not None:
                    set_submodule(stock, path, leaf.stock_module())
            elif _has_own_state(leaf):
                set_submodule(stock, path, leaf)
        return stock.train(self.training)


def _has_own_state(module):
    return any(True for _ in module.parameters(recurse=False)) or \
        any(True for _ in module.buffers(recurse=False))


def set_submodule(root, path, module):
    """Replaces the submodule at dotted `path` under `root` (creating nothing)."""
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if name not in parent._modules:
        raise RuntimeError(f"set_submodule: {type(parent).__name__} has no child {name!r} (path {path!r})")
    parent._modules[name] = module


_STEM_MAX_IN_CHANNELS = 4  # kStemMaxInChannels, csrc/cpu/stem_conv_tiles.h


def _own_cpu_kernel_dtypes(conv, stride, padding, groups):
    """The dtypes in which the operator may run one of our kernels for this layer (it decides
    per call, and caches the weight packed for that kernel itself): for grouped convs our
    kernels, with 8 or 16 channels per group (csrc/cpu/grouped_conv_narrow.h, AVX-512 or AVX2;
    bfloat16 too where the build has grouped_conv_narrow_bf16.h), or a 3x3 stride-1 conv with a multiple
    of 8 channels per group from 32 to 64, or 120 or 128 (Winograd,
    csrc/cpu/grouped_conv_winograd.h; float32), or a multiple of 16 from 32 on (the wide-group
    tiles, csrc/cpu/grouped_conv_wide.h; float32, AVX-512); for 1x1 ungrouped convs one whole-tensor GEMM
    (float32, bfloat16; the autotuner's choice, csrc/cpu/conv_bn_act_cpu.h) or our GEMM tiles;
    for the stem (ungrouped, at most 4 input channels) our stem tiles (csrc/cpu/stem_conv_tiles.h,
    float32, AVX-512: at batch 1 RegNetY-400MF's stem took 0.19 ms against 0.33 ms through the
    packed oneDNN conv, and the whole forward 6.35 against 6.59 ms)."""
    if groups == 1:
        plain_gemm = conv.kernel_size == (1, 1) and padding == 0
        if plain_gemm:
            return frozenset({torch.float32, torch.bfloat16})
        stem = (conv.in_channels <= _STEM_MAX_IN_CHANNELS and conv.kernel_size[0] > 1
                and compiled_with_gemm_tiles_kernel())
        return frozenset({torch.float32}) if stem else frozenset()
    width = conv.in_channels // groups
    if conv.out_channels != conv.in_channels:
        return frozenset()
    if width in (8, 16):
        dtypes = {torch.float32} if compiled_with_narrow_group_kernel() else set()
        if compiled_with_narrow_group_bf16_kernel():
            dtypes.add(torch.bfloat16)
        return frozenset(dtypes)
    winograd = (conv.kernel_size == (3, 3) and stride == 1 and padding == 1 and width % 8 == 0
                and (32 <= width <= 64 or width in (120, 128)))
    wide = width % 16 == 0 and width >= 32 and compiled_with_gemm_tiles_kernel()
    return frozenset({torch.float32}) if (winograd and compiled_with_winograd_kernel()) or wide else frozenset()


def _check_in_channels(x, in_channels):
    """The same ValueError on every path (the operator's would blame its weight; oneDNN's packed
    path names nothing). Not while jit-traced: sizes read there are traced values that warn, and
    the operator checks the call anyway."""
    # is_compiling first: Dynamo folds it to True and never meets _is_tracing, which it cannot trace.
    jit_tracing = not torch.compiler.is_compiling() and torch._C._is_tracing()
    if not jit_tracing and (x.dim() != 4 or x.shape[1] != in_channels):
        raise ValueError(f"FusedConvBNAct: x must be [N, {in_channels}, H, W] ({in_channels} channels, the "
                         f"conv's in_channels), got shape {list(x.shape)}")


class FusedConvBNAct(_HoldsStock):
    """conv2d -> BatchNorm2d [-> + residual] [-> ReLU] as one conv_bn_act call.

    conv, bn: the stock nn.Conv2d and nn.BatchNorm2d, kept as children named conv_name/bn_name.
    relu: whether ReLU follows (a block may override it per call, see forward).
    """

    def __init__(self, conv, bn, *, relu, conv_name="conv", bn_name="bn", stock=None):
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"FusedConvBNAct: conv must be an nn.Conv2d, got {type(conv).__name__}")
        if not isinstance(bn, nn.BatchNorm2d | nn.SyncBatchNorm) or not bn.affine:
            raise ValueError(f"FusedConvBNAct: bn must be an affine BatchNorm2d, got {bn!r}")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"FusedConvBNAct: bn has {bn.num_features} features but conv has "
                             f"{conv.out_channels} output channels")
        self.add_module(conv_name, conv)
        self.add_module(bn_name, bn)
        self._conv_name, self._bn_name = conv_name, bn_name
        self.relu = bool(relu)
        self.stride, self.padding, self.groups = conv_geometry(conv)
        self._folded = folded_inference.FoldedConv()
        self._own_cpu_kernel_dtypes = _own_cpu_kernel_dtypes(conv, self.stride, self.padding, self.groups)
        self._remember_stock(stock)

    @property
    def conv_module(self):
        return self._modules[self._conv_name]

    @property
    def bn_module(self):
        return self._modules[self._bn_name]

    def forward(self, x, residual=None, relu=None):
        """y = act(BN(conv(x)) + residual); relu=None uses the module's own setting."""
        if isinstance(x, _FxProxy):
            return _fx_leaf_call(self, x, residual=residual, relu=relu)
        # Children straight from _modules and each tensor read once: at batch 1 this Python is a
        # visible share of a layer's time.
        conv, bn = self._modules[self._conv_name], self._modules[self._bn_name]
        relu = self.relu if relu is None else relu
        conv_weight = conv.weight
        _check_in_channels(x, conv_weight.shape[1] * self.groups)
        if not x.is_contiguous(memory_format=torch.channels_last) and _is_channels_last(conv_weight):
            # nn.Conv2d's rule: channels_last out when the input or the weight is. The operator
            # keeps its input's format, so a channels_last model fed NCHW images would otherwise
            # run NCHW throughout (RegNetY-400MF, batch 8: 87 ms against 54 ms, stock 74 ms).
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = compute_dtype(x, conv_weight.dtype, "FusedConvBNAct")
        # SyncBatchNorm needs statistics from every process; an empty batch, which our operators
        # refuse, gets the stock modules' result (an empty output). (A trace records no branch:
        # reading the size there would only warn.)
        if isinstance(bn, nn.SyncBatchNorm) or (not torch.jit.is_tracing() and x.numel() == 0):
            return self._stock_forward(conv, bn, x, residual, relu)
        running_mean = bn.running_mean
        batch_stats = bn.training or running_mean is None
        if not batch_stats:
            params = (conv.weight, conv.bias, bn.weight, bn.bias, running_mean, bn.running_var)
            if folded_inference.applies(x, params[:4], residual, dtype, self.groups):
                return self._cpu_inference(x, params, bn.eps, residual, relu, dtype)
        x, residual = _cast(x, dtype), _cast(residual, dtype)
        weight, bias = _cast(conv.weight, dtype), _cast(conv.bias, dtype)
        gamma, beta = _cast(bn.weight, dtype), _cast(bn.bias, dtype)
        if batch_stats:
            return self._batch_stats_forward(bn, x, weight, bias, gamma, beta, residual, relu)
        if torch.compiler.is_compiling() and _all_of_dtype(dtype, conv.weight, conv.bias, bn.weight, bn.bias,
                                                           running_mean, bn.running_var):
            # Nothing cast: the operator gets the module's own tensors (graph inputs or frozen
            # constants, never a buffer the compiled code reuses), so the trace keeps the
            # operator's folded-weight cache (ops/conv_bn_act.py).
            return conv_bn_act_eval_of_own_tensors_call(x, weight, bias, gamma, beta, running_mean, bn.running_var,
                                                        residual, self.stride, self.padding, self.groups,
                                                        float(bn.eps), bool(relu))
        return conv_bn_act(x, weight, gamma, beta, bn.running_mean.to(dtype), bn.running_var.to(dtype),
                           bias=bias, stride=self.stride, padding=self.padding, groups=self.groups,
                           training=False, eps=bn.eps, relu=relu, residual=residual)

    def _batch_stats_forward(self, bn, x, weight, bias, gamma, beta, residual, relu):
        y, _conv_out, mean, var = _TRAIN_OP(x, weight, bias, gamma, beta, residual, self.stride,
                                            self.padding, self.groups, float(bn.eps), relu)
        count = y.shape[0] * y.shape[2] * y.shape[3]
        if count < 2:
            raise ValueError(f"FusedConvBNAct: training-mode BatchNorm needs more than one value per "
                             f"channel, got output shape {list(y.shape)}")
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            # The running statistics keep their own dtype (float32 under autocast), as in stock BN.
            with torch.no_grad():
                if bn.num_batches_tracked is not None:
                    bn.num_batches_tracked.add_(1)
                momentum = bn.momentum
                UPDATE_RUNNING_STATS(
                    bn.running_mean, bn.running_var, mean, var, bn.num_batches_tracked, count,
                    0.0 if momentum is None else float(momentum), momentum is None)
            save_after_running_stats_update(y)
        return y

    def inference_call(self, x, residual, relu, dtype):
        """This layer in a block's lean inference (FusedResBottleneck): forward's CPU inference
        path in `dtype` (compute_dtype(x)) without its per-call tests, which the block made once
        for all its layers (folded_inference.lean_block_inference: not traced, no autograd, no
        global hook), and without nn.Module's call. Layers whose own state needs more (BN in
        training mode or without running statistics, SyncBatchNorm, a forward hook, a subclassed
        or parametrized conv or BN, a 16-bit residual into a grouped conv) take the module call.
        Where one of our kernels runs the layer (every tensor of one dtype), the operator's C
        entry is called right here, its tests written out inline."""
        modules = self._modules
        conv, bn = modules[self._conv_name], modules[self._bn_name]
        if bn.training or type(bn) is not nn.BatchNorm2d or type(conv) is not nn.Conv2d or \
                self._forward_hooks or self._forward_pre_hooks:
            return self(x, residual=residual, relu=relu)
        weights, bn_weights, stats = conv._parameters, bn._parameters, bn._buffers
        weight, bias, gamma, beta = weights["weight"], weights["bias"], bn_weights["weight"], bn_weights["bias"]
        running_mean, running_var = stats["running_mean"], stats["running_var"]
        if running_mean is None:
            return self(x, residual=residual, relu=relu)
        if dtype in self._own_cpu_kernel_dtypes and x.dtype == dtype and weight.dtype == dtype and \
                gamma.dtype == dtype and beta.dtype == dtype and running_mean.dtype == dtype and \
                running_var.dtype == dtype and (bias is None or bias.dtype == dtype) and \
                (residual is None or residual.dtype == dtype) and x.shape[1] == weight.shape[1] * self.groups:
            args = (x, weight, bias, gamma, beta, running_mean, running_var, residual, self.stride, self.padding,
                    self.groups, bn.eps, relu)
            out = _C.conv_bn_act_eval_call(*args)
            # NotImplemented (a Tensor subclass, a torch function mode, an int eps): torch.ops' call.
            return _ops.conv_bn_act_eval.default(*args) if out is NotImplemented else out
        if not folded_inference.residual_fusable(residual, dtype, self.groups):
            return self(x, residual=residual, relu=relu)
        _check_in_channels(x, weight.shape[1] * self.groups)  # (forward checks its own calls)
        params = (weight, bias, gamma, beta, running_mean, running_var)
        return self._cpu_inference(x, params, bn.eps, residual, relu, dtype)

    def _cpu_inference(self, x, params, eps, residual, relu, dtype):
        """The folded-BN CPU inference both forward and inference_call end in. params: conv
        weight and bias, BN weight, bias, running mean and variance. The operator (its own
        weight cache, our kernels) takes tensors of one dtype; otherwise, as under autocast
        (float32 parameters, bfloat16 activations), the cached fold casts them, and goes to the
        operator where one of our kernels may run, else to the packed oneDNN conv."""
        geometry = (self.stride, self.padding, self.groups)
        if dtype in self._own_cpu_kernel_dtypes:
            if _all_of_dtype(dtype, x, *params):
                return _EVAL_OP(x, *params, residual, *geometry, float(eps), relu)
            # Autocast (float32 parameters): the cached fold through the operator, so that our
            # kernels still run (bfloat16 autocast inference against the packed oneDNN path for
            # every such layer, interleaved, 2-core Zen 4 VM, 2026-12-07: RegNetX-400MF 1.145x at
            # batch 1, 1.016x at batch 8; RegNetY-400MF 1.076x, 1.035x).
            return self._folded.through_operator(params, eps, x, residual, relu, *geometry, dtype)
        return self._folded(params, eps, x, residual, relu, *geometry, dtype)

    @staticmethod
    def _stock_forward(conv, bn, x, residual, relu):
        y = bn(conv(x))
        if residual is not None:
            y = y + residual
        return F.relu(y) if relu else y

    def extra_repr(self):
        return f"stride={self.stride}, padding={self.padding}, groups={self.groups}, relu={self.relu}"


class FusedSqueezeExcite(_HoldsStock):
    """Squeeze-and-excitation as one squeeze_excite call.

    reduce, expand: the stock SE's 1x1 convs (or Linear layers) with biases, kept as children
    named reduce_name/expand_name.
    """

    def __init__(self, reduce, expand, *, reduce_name="reduce", expand_name="expand", stock=None):
        super().__init__()
        for name, layer in ((reduce_name, reduce), (expand_name, expand)):
            if getattr(layer, "bias", None) is None:
                raise ValueError(f"FusedSqueezeExcite: {name} needs a bias, got {layer!r}")
        self.add_module(reduce_name, reduce)
        self.add_module(expand_name, expand)
        self._reduce_name, self._expand_name = reduce_name, expand_name
        self._cast = folded_inference.CastParameters()
        self._remember_stock(stock)

    def forward(self, x):
        if isinstance(x, _FxProxy):
            return _fx_leaf_call(self, x)
        reduce, expand = self._modules[self._reduce_name], self._modules[self._expand_name]
        params = (reduce.weight, reduce.bias, expand.weight, expand.bias)
        dtype = compute_dtype(x, params[0].dtype, "FusedSqueezeExcite")
        if _all_of_dtype(dtype, x, *params):  # nothing to cast
            return squeeze_excite(x, *params)
        return squeeze_excite(x.to(dtype), reduce.weight.to(dtype), reduce.bias.to(dtype),
                              expand.weight.to(dtype), expand.bias.to(dtype))

    def inference_call(self, x, overwrite=False):
        """This SE in a block's lean inference (see FusedConvBNAct.inference_call). overwrite:
        x is the block's own temporary, seen by nobody else, so the result may be written over
        it (squeeze_excite_)."""
        reduce, expand = self._modules[self._reduce_name], self._modules[self._expand_name]
        if hooked(self) or type(reduce) not in _PLAIN_SE_LAYERS or type(expand) not in _PLAIN_SE_LAYERS:
            return self(x)
        r, e = reduce._parameters, expand._parameters
        params = (r["weight"], r["bias"], e["weight"], e["bias"])
        if not _all_of_dtype(x.dtype, *params):  # autocast: cast once, kept until they change
            params = self._cast(params, x.dtype)
        return squeeze_excite_(x, *params) if overwrite else squeeze_excite(x, *params)


# SE layers whose weight and bias are plain Parameters (subclasses may compute them).
_PLAIN_SE_LAYERS = (nn.Conv2d, nn.Linear)


class FusedLinear(_HoldsStock, nn.Linear):
    """nn.Linear (a RegNet's classifier) whose CPU inference without autograd multiplies by a
    weight kept packed for oneDNN (folded_inference.PackedLinear); F.linear everywhere else.

    Holds the stock layer's own weight and bias Parameters under the same names. It is an
    nn.Linear, so code that looks for the classifier by type still finds it.
    """

    def __init__(self, linear, *, stock=None):
        nn.Module.__init__(self)
        if type(linear).forward is not nn.Linear.forward:
            raise ValueError(f"FusedLinear: linear must be a plain nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self._packed = folded_inference.PackedLinear()
        self._remember_stock(stock)

    def forward(self, x):
        if isinstance(x, _FxProxy):
            return _fx_leaf_call(self, x)
        weight, bias = self.weight, self.bias
        dtype = compute_dtype(x, weight.dtype, "FusedLinear")
        if folded_inference.linear_applies(x, weight, bias, dtype):
            return self._packed(weight, bias, x, dtype)
        return F.linear(x, weight, bias)

    def stock_module(self):
        stock = super().stock_module()
        stock.weight, stock.bias = self.weight, self.bias  # replaced after fusing: carry over
        return stock


class FusedHead(_HoldsStock):
    """A classifier head (global average pool, [dropout,] nn.Linear `fc`): ours or timm's. For
    float32 CPU inputs (folded_inference.pool_linear_applies) it runs as one pool_linear call,
    gradients included, unless a dropout is active (training mode, p > 0); everywhere else it
    runs the stock head's own forward.

    Holds the stock head's children under their names (fuse() then swaps `fc` for a FusedLinear).
    """

    def __init__(self, stock):
        super().__init__()
        for name, child in stock.named_children():
            self.add_module(name, child)
        self._stock_forward = type(stock).forward
        self._remember_stock(stock)

    def forward(self, x, *args, **kwargs):
        if isinstance(x, _FxProxy):
            return _fx_leaf_call(self, x, *args, **kwargs)
        fc, drop = self._modules["fc"], self._modules.get("drop")
        dropping = self.training and isinstance(drop, nn.Dropout) and drop.p > 0
        weight = getattr(fc, "weight", None)  # none once timm's reset(0) made fc an nn.Identity
        if not (dropping or args or any(kwargs.values())) and weight is not None and \
                folded_inference.pool_linear_applies(x, weight, fc.bias):
            return _ops.pool_linear(x, weight, fc.bias)
        return self._stock_forward(self, x, *args, **kwargs)

    def reset(self, *args, **kwargs):
        """timm's ClassifierHead.reset (what model.reset_classifier calls): the stock head's reset,
        whose new children (a new fc, maybe a new pooling) this head then holds."""
        stock = self.stock_module()
        if not callable(getattr(type(stock), "reset", None)):
            raise AttributeError(f"{type(stock).__name__} has no reset()")
        stock.reset(*args, **kwargs)
        self._modules.clear()
        self._modules.update(stock._modules)

    def __getattr__(self, name):
        # The stock head's own attributes (timm's num_features, read after reset_classifier).
        try:
            return super().__getattr__(name)
        except AttributeError:
            stock = self.__dict__.get(_STOCK)
            if stock is None or name.startswith("_") or name not in stock.__dict__:
                raise
            return stock.__dict__[name]


class FusedBranch(nn.Module):
    """Holds fused layers under a stock container's name (torchvision's block keeps a, b, se, c
    under .f), so state_dict keys stay the same. The fused block calls the layers itself."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("FusedBranch only holds layers for a fused block; call the block instead")


class FusedResBottleneck(_HoldsStock):
    """Residual bottleneck block: a (1x1) -> b (3x3 grouped) -> [SE] -> c (1x1), shortcut added and
    the final ReLU applied in c's epilogue.

    parts: role -> (dotted path inside the block, fused module); roles a, b, c and optionally se
    and proj. shortcut: "identity", "proj" or "none". final_relu: ReLU after the addition.
    """

    ROLES = ("a", "b", "se", "c", "proj")

    def __init__(self, parts, *, shortcut, final_relu, stock=None):
        super().__init__()
        if shortcut not in ("identity", "proj", "none"):
            raise ValueError(f"FusedResBottleneck: shortcut must be 'identity', 'proj' or 'none', got {shortcut!r}")
        if (shortcut == "proj") != ("proj" in parts) or not {"a", "b", "c"} <= set(parts):
            raise ValueError(f"FusedResBottleneck: parts {sorted(parts)} do not fit shortcut={shortcut!r} "
                             "(need a, b, c, and proj exactly when shortcut='proj')")
        self._paths = {}
        for role, (path, module) in parts.items():
            if role not in self.ROLES:
                raise ValueError(f"FusedResBottleneck: unknown role {role!r} (expected one of {self.ROLES})")
            *containers, name = path.split(".")
            parent = self
            for c in containers:
                if c not in parent._modules:
                    parent.add_module(c, FusedBranch())
                    parent._modules[c].training = self.training if stock is None else stock.training
                parent = parent._modules[c]
            parent.add_module(name, module)
            self._paths[role] = tuple(path.split("."))
        self.shortcut, self.final_relu = shortcut, bool(final_relu)
        self.has_se = "se" in parts
        # a and b as one conv_pair_relu call in CPU inference, where their structure allows.
        self._pair = conv_pair.FoldedPair() if conv_pair.pair_fits(self.part("a"), self.part("b")) else None
        self._remember_stock(stock)

    def part(self, role):
        module = self
        for name in self._paths[role]:
            module = module._modules[name]
        return module

    def forward(self, x):
        if isinstance(x, _FxProxy):
            return _fx_leaf_call(self, x)
        # Checked once here for the block: its lean path calls the layers without their forward.
        a = self.part("a")
        conv_a = a._modules[a._conv_name]
        weight_a = conv_a._parameters.get("weight")  # (nn.Module's getattr: 1 us; a parametrized weight is not there)
        dtype = compute_dtype(x, (conv_a.weight if weight_a is None else weight_a).dtype, "FusedResBottleneck")
        if folded_inference.lean_block_inference(x, dtype):
            return self._lean_forward(x, dtype)
        if self.shortcut == "proj":
            shortcut = self.part("proj")(x)
        else:
            shortcut = x if self.shortcut == "identity" else None
        y = None if self._pair is None else self._pair(self.part("a"), self.part("b"), x)
        if y is None:
            y = self.part("b")(self.part("a")(x))
        if self.has_se:
            y = self.part("se")(y)
        return self.part("c")(y, residual=shortcut, relu=self.final_relu)

    def _lean_forward(self, x, dtype):
        """forward in CPU inference: each layer's inference_call in place of its module call (at
        batch 1, RegNetY-400MF's 16 blocks spent over 1 ms in the calls and their per-layer
        tests)."""
        a, b = self.part("a"), self.part("b")
        if self.shortcut == "proj":
            proj = self.part("proj")
            shortcut = proj.inference_call(x, None, proj.relu, dtype)
        else:
            shortcut = x if self.shortcut == "identity" else None
        y = None if self._pair is None else self._pair(a, b, x)
        if y is None:
            y = conv_pair.run_separately(a, b, x, dtype)
        if self.has_se:
            # y is b's fresh output; only b's forward hooks (where b took its module call) could
            # have kept it, so otherwise the SE writes its result over it.
            y = self.part("se").inference_call(y, overwrite=not hooked(b))
        return self.part("c").inference_call(y, shortcut, self.final_relu, dtype)

    def extra_repr(self):
        return f"shortcut={self.shortcut}, final_relu={self.final_relu}"
