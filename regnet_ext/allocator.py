"""Opt-in glibc malloc settings for CPU training and inference of activation-heavy networks.

PyTorch's CPU allocator calls malloc for every tensor. glibc serves large blocks from fresh
mmaps and returns freed memory at the top of the heap to the kernel, so an activation-sized
tensor can be paid for again in first-touch page faults. On the development VM (where a fault
cost about 1 µs) a plain RegNetX-400MF training loop (batch 8, 224px, one model per process) took
about 40,000 faults per step. Raising the mmap threshold to its maximum (32 MiB) and the trim
threshold to 1 GiB keeps freed blocks in the process for reuse; in separate single-model runs
(noisy, 2026-11-22) the eager step went from 149 ms to 110-120 ms and the fused one from 135 ms
to 99-115 ms. In benchmarks/bench_fuse.py, whose process holds many models, it changed neither
the images/s nor the ratios beyond noise (2026-11-22; the README has the later runs).

Blocks above the threshold are still mmapped, and so are paid again on every call: an
EfficientNet-B0 forward at batch 8 (224px) paid about 9,400 faults with the settings above and
48,000 without, against none with ``use_mmap=False`` (every block from the heap, 2026-12-04).
`regnet-ext demo`, `profile` and `train` and the benchmarks use that by default, so that no
network they compare is charged for glibc's choices (and training steps pay no faults).

The cost: the process keeps up to 1 GiB of freed memory instead of returning it (with
``use_mmap=False`` a block freed below the heap's top is never returned, and the heap fragments:
a loop that allocates and frees one 64 MiB tensor settled at 1,020 MiB resident against 506 MiB
with glibc's defaults; the demo's peak went from 1.06 to 1.14 GB), and the settings are
process-wide. jemalloc or tcmalloc (LD_PRELOAD) are the other common remedy.
Nothing here runs unless called.
"""
import ctypes
import ctypes.util
import platform

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30


def tune_malloc(*, mmap_threshold=MMAP_THRESHOLD, trim_threshold=TRIM_THRESHOLD, use_mmap=True):
    """Applies the settings above through glibc's mallopt; ``use_mmap=False`` also stops malloc
    from mmapping blocks of any size. Returns True when every setting was accepted, False where
    malloc is not glibc's (other platforms and libcs keep their defaults)."""
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not isinstance(value, int) or not 0 < value < 2**31:
            raise ValueError(f"tune_malloc: {name} must be an int in (0, 2**31), got {value!r}")
    if not isinstance(use_mmap, bool):
        raise ValueError(f"tune_malloc: use_mmap must be a bool, got {use_mmap!r}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    return (use_mmap or libc.mallopt(_M_MMAP_MAX, 0) == 1) and ok


def minor_faults():
    """This process's minor page faults so far: first touches of fresh pages, which the settings
    above avoid for reused memory (about 1 us each on the development VM, outside any kernel)."""
    import resource  # Unix only; imported here so that the module loads everywhere

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def counting_faults(fn, counts):
    """fn, appending the minor page faults of each call to the list `counts`."""
    def call():
        before = minor_faults()
        fn()
        counts.append(minor_faults() - before)
    return call
