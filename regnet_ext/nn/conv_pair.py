"""CPU inference of a bottleneck's first two layers as one conv_pair_relu call.

Conv a (1x1) and conv b (3x3, 8 or 16 channels per group), each with BN and ReLU, run band by
band so that a's output stays in the cache (csrc/cpu/conv_pair.cpp). Where the pair applies:
the float32 inference path of folded_inference (CPU, channels_last, no autograd, not traced),
both BNs using running statistics, no forward hook on layer a or b (the pair would skip it), a
build with the narrow-group kernel, and the size rule below. The folded weights are cached like
FoldedConv's, keyed on every tensor the folds read.

Whether the pair pays depends on the CPU: where the size rule takes it, RegNetY/X-400MF's blocks
ran 1.09-1.45x faster with it on a 2-core AMD EPYC VM (2026-12-04), but 0.74-0.95x on a 2-core
Ice Lake Xeon (48 MB of L3; three runs on 2026-12-06, after the narrow-group and 1x1 kernels the
blocks run without it had become faster). So where the CPU conv autotuner is on
(regnet_ext.ops.cpu_conv_autotune_enabled), the first call of each block shape that the rule
takes times the pair against the two layers' own calls, interleaved, and the process keeps the
faster (`decisions()`; regnet_ext.ops.clear_cpu_conv_autotune forgets them); elsewhere the rule
alone decides.

`enabled` switches the path off for the whole process (benchmarks compare both ways); `timed =
False` keeps the rule's choice without timing it.
"""
import torch
from torch import nn

from .._extension import compiled_with_narrow_group_kernel
from ..ops import cpu_autotune
from . import folded_inference

enabled = True
timed = True
# The pair runs where conv a's output (whole batch) is at least MIN_INTERMEDIATE_BYTES and conv a
# has at most MAX_IN_CHANNELS inputs (up to there the operator computes it with its own register
# tiles, kOwnGemmMaxInC in csrc/cpu/conv_pair.cpp; above, with ATen's GEMM per band, the pair
# lost 10% on a 5 MB block). Set from benchmarks/bench_conv_pair.py (see benchmarks/README.md).
MIN_INTERMEDIATE_BYTES = 4 << 20
MAX_IN_CHANNELS = 64


def pair_fits(a, b):
    """Whether fused layers a and b (FusedConvBNAct) have the pair's structure: a a 1x1 stride-1
    ungrouped conv with ReLU, b a 3x3 conv (padding 1, stride 1 or 2) with ReLU over a's
    channels in groups of 8 or 16."""
    ca, cb = a.conv_module, b.conv_module
    return (compiled_with_narrow_group_kernel() and a.relu and b.relu
            and ca.kernel_size == (1, 1) and (a.stride, a.padding, a.groups) == (1, 0, 1)
            and cb.kernel_size == (3, 3) and b.padding == 1 and b.stride in (1, 2)
            and cb.in_channels == cb.out_channels == ca.out_channels
            and cb.in_channels // b.groups in (8, 16)
            and isinstance(a.bn_module, nn.BatchNorm2d) and isinstance(b.bn_module, nn.BatchNorm2d))


def _tensors(layer):
    conv, bn = layer.conv_module, layer.bn_module
    return (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)


class FoldedPair(folded_inference._OneEntryCache):
    """The cached folded weights and biases of a block's layers a and b. `taken`: whether the
    last call ran the pair (the profiler accounts that block's bytes by it)."""

    taken = False

    def __call__(self, a, b, x):
        """y = b(a(x)) through conv_pair_relu, or None where the pair does not apply to this call."""
        y = self._run(a, b, x)
        if self.taken != (y is not None):  # (no attribute write while torch.compile traces)
            self.taken = y is not None
        return y

    def _run(self, a, b, x):
        # The size rule early: at small batches it turns every block away, and these checks run
        # on every call (but not under tracing, where reading sizes as ints would warn).
        if not enabled or torch.compiler.is_compiling() or torch._C._is_tracing():
            return None
        if x.shape[1] > MAX_IN_CHANNELS or \
                x.numel() // max(x.shape[1], 1) * a.conv_module.out_channels * x.element_size() < MIN_INTERMEDIATE_BYTES:
            return None
        if a.bn_module.training or b.bn_module.training or folded_inference.hooked(a) or folded_inference.hooked(b):
            return None
        ta, tb = _tensors(a), _tensors(b)
        if not folded_inference.applies(x, ta[:4] + tb[:4], None, torch.float32) or x.dtype != torch.float32 \
                or torch.is_autocast_enabled("cpu") or ta[4] is None or tb[4] is None:
            return None
        choice = None  # the key of this shape's timed choice, where one is made
        if timed and cpu_autotune.cpu_conv_autotune_enabled():
            choice = (tuple(x.shape), a.conv_module.out_channels, b.stride, b.groups, torch.get_num_threads(),
                        cpu_autotune.cpu_conv_autotune_excluded())
            if _decisions.get(choice) is False:
                return None
        eps_a, eps_b = a.bn_module.eps, b.bn_module.eps
        key = folded_inference._key(ta + tb) + (eps_a, eps_b)
        entry = self._entry
        if entry is None or entry[0] != key:
            with torch.no_grad():
                entry = self._entry = (key, *folded_inference.fold(*ta, eps_a), *folded_inference.fold(*tb, eps_b))
        _, weight_a, bias_a, weight_b, bias_b = entry

        def pair():
            return torch.ops.regnet_ext.conv_pair_relu(x, weight_a, bias_a, weight_b, bias_b, b.stride, b.groups)
        if choice is not None and choice not in _decisions:
            _decisions[choice] = _pair_is_faster(pair, lambda: run_separately(a, b, x, x.dtype))
            if not _decisions[choice]:
                return None
        return pair()


# The timed choices: (input shape, a's output channels, b's stride and groups, threads, the conv
# kernels the autotuner leaves out) -> whether the pair ran faster.
_decisions = {}


def decisions():
    """The timed choices so far: {(input shape, conv a's output channels, conv b's stride,
    groups, threads, excluded conv kernels): whether the pair was the faster}."""
    return dict(_decisions)


def _forget_decisions():
    _decisions.clear()


cpu_autotune.on_clear(_forget_decisions)


def run_separately(a, b, x, dtype):
    """Layers a then b, each through its own inference call: what a block runs in CPU inference
    without the pair (FusedResBottleneck._lean_forward), and what the timing sets the pair against."""
    return b.inference_call(a.inference_call(x, None, a.relu, dtype), None, b.relu, dtype)


def _pair_is_faster(pair, separate):
    """Times both, interleaved, after one untimed call each (the layers' own kernels tune then):
    5 rounds of samples of about 4 ms; medians."""
    from ..profiling.timing import time_interleaved  # (profiling imports this package)
    times = time_interleaved({"pair": pair, "separate": separate}, rounds=5, warmup=1, target_s=0.004)
    return times["pair"]["median_s"] < times["separate"]["median_s"]
