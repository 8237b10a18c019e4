"""What the CPU conv autotuner chose (csrc/cpu/conv_autotune.h).

Where oneDNN and our kernels can both compute a conv (grouped: 8 or 16 channels per group in
float32 with AVX-512 or AVX2+FMA, or in bfloat16 on CPUs with AVX512-BF16; 32 to 128 at stride 1
for Winograd, float32, with AVX-512; 1x1: our GEMM tiles in eval, float32, with AVX-512, and the
whole-tensor GEMM for small ones; KxK with at most 4 input channels, a stem: our stem tiles in eval
and the training forward, float32, with AVX-512), the first call of each shape times the candidates and the
process keeps the fastest, as torch.backends.cudnn.benchmark does on GPUs: for the eval and
training forward (oneDNN or ours), and for the backward (which of oneDNN, our weight-gradient
tiles and Winograd compute the two gradients). It is on unless
REGNET_EXT_CPU_AUTOTUNE=0, torch.use_deterministic_algorithms(True) or REGNET_EXT_CPU_CONV says
otherwise; then fixed rules measured on the development machine decide.

cpu_conv_autotune_excluding(*names) leaves kernels out of the choice for a block of code: the A/B
of one kernel inside a whole model, in one process.
"""
import contextlib

import torch

from .. import _C


def cpu_conv_autotune_enabled():
    """Whether a call of a shape not seen before is timed now (the settings above)."""
    return _C.cpu_conv_autotune_enabled()


def cpu_conv_autotune_records():
    """One dict per tuned call shape: pass ("eval", "train_forward", "backward", or
    "backward_input" / "backward_weight" where only one gradient was asked for), dtype (a
    torch.dtype), x_shape, out_channels, kernel, stride, padding, groups, relu and residual (the
    eval epilogue's; False for the other passes, whose timing covers the conv alone), threads
    (torch's intra-op thread count, part of the key: a new count times again), excluded (the
    kernels cpu_conv_autotune_excluding left out, also part of the key), chosen and
    median_us (each candidate's median time in microseconds, by name: "onednn", "narrow",
    "winograd", "gemm" (small 1x1 convs), "gemm_tiles" (1x1 convs in eval, AVX-512), "stem_tiles"
    (convs with at most 4 input channels, AVX-512), "wide_group" (grouped convs with 32 or more
    channels per group, a multiple of 16, in eval, AVX-512), or for the
    backward "onednn_input_grad+own_weight_grad" and the like); rounds_us and round_faults (by
    the same names: each timed round, and the page faults the process took during it). A median
    leaves out the rounds that took page faults where the candidate has rounds without: those
    time the heap's growth into fresh pages, which only the first calls pay."""
    records = _C.cpu_conv_autotune_records()
    for r in records:
        r["dtype"] = getattr(torch, r["dtype"])  # torch's own name of it, e.g. "float32"
        r["excluded"] = list(_names_of(r.pop("excluded_mask")))
    return records


# Other timed choices that clearing forgets too (regnet_ext.nn.conv_pair's).
_clear_hooks = []


def on_clear(fn):
    """Has clear_cpu_conv_autotune call fn() too."""
    _clear_hooks.append(fn)


def clear_cpu_conv_autotune():
    """Forgets every choice: the next call of each shape times the candidates again (the conv
    kernels', and regnet_ext.nn.conv_pair's pair or not)."""
    for fn in _clear_hooks:
        fn()
    _C.clear_cpu_conv_autotune()


def cpu_conv_kernel_names():
    """The names a record's chosen / median_us and cpu_conv_autotune_excluding use."""
    return _C.cpu_conv_kernel_names()


def check_cpu_conv_kernel_names(names):
    """A ValueError naming the first of `names` that is no kernel of cpu_conv_kernel_names()."""
    known = cpu_conv_kernel_names()
    for name in names:
        if name not in known:
            raise ValueError(f"unknown kernel {name!r}; expected one of {', '.join(known)}")


def cpu_conv_autotune_excluded():
    """The kernels the autotuner leaves out now (a tuple of names; empty by default)."""
    return _names_of(_C.cpu_conv_autotune_excluded_mask())


@contextlib.contextmanager
def cpu_conv_autotune_excluding(*names):
    """Inside the block the autotuner chooses only among candidates not named (names as in
    cpu_conv_kernel_names(), e.g. "gemm_tiles", "narrow", "onednn"), added to those excluded
    already; where one candidate is left it runs untimed, where none the fixed rule decides. The
    exclusions are part of each decision's key, so a process that alternates blocks with and
    without a kernel times each shape once per set and then reuses both choices: the in-process
    A/B of that kernel inside a model (benchmarks/bench_fuse.py --exclude-kernels). Process-wide
    (every thread); without effect where the autotuner is off."""
    try:
        check_cpu_conv_kernel_names(names)
    except ValueError as exc:
        raise ValueError(f"cpu_conv_autotune_excluding: {exc}") from None
    known = cpu_conv_kernel_names()
    mask = _C.cpu_conv_autotune_excluded_mask()
    for name in names:
        mask |= 1 << known.index(name)
    before = _C.set_cpu_conv_autotune_excluded(mask)
    try:
        yield
    finally:
        _C.set_cpu_conv_autotune_excluded(before)


def _names_of(mask):
    return tuple(name for bit, name in enumerate(cpu_conv_kernel_names()) if mask >> bit & 1)
