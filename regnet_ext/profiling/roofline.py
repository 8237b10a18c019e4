"""Device ceilings (memory bandwidth, compute) for roofline figures.

Named GPUs have nominal ceilings (dense tensor-core rates, bf16). The device a profile runs on is
measured by a quick probe on first use (a large copy for bandwidth, a large matmul for compute,
on the CPU also the same product as a 1x1 conv; CUDA events on a GPU, the wall clock around
synchronised regions on a CPU) and cached in ``$REGNET_EXT_CACHE`` (default
``~/.cache/regnet_ext``)/roofline.json, keyed by the probe's version, the device, the dtype, the
thread count and the torch version.
"""
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Ceiling:
    name: str
    bytes_per_s: float
    flops_per_s: float
    source: str  # "nominal" or "measured"

    @property
    def balance(self):
        """Arithmetic intensity (flop/byte) where the two ceilings meet."""
        return self.flops_per_s / self.bytes_per_s

    def attainable(self, flops, nbytes):
        """Best achievable flop/s for work of this intensity."""
        if nbytes <= 0:
            return self.flops_per_s
        return min(self.flops_per_s, self.bytes_per_s * flops / nbytes)


NOMINAL = {
    "h100": Ceiling("NVIDIA H100 SXM (bf16 dense, HBM3)", 3.0e12, 800e12, "nominal"),
    "h200": Ceiling("NVIDIA H200 (bf16 dense, HBM3e)", 4.8e12, 989e12, "nominal"),
}


def cache_path():
    root = os.environ.get("REGNET_EXT_CACHE") or Path.home() / ".cache" / "regnet_ext"
    return Path(root) / "roofline.json"


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def wall_clock_median(fn, reps):
    """Median wall-clock seconds of ``reps`` calls of a synchronous (CPU) function."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# Bumped when the probe changes, so caches filled by an older probe are measured again.
_PROBE_VERSION = 2


def _device_key(device, dtype):
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_name()} x{torch.get_num_threads()} threads"
    return (f"{device.type}|{name}|{str(dtype).removeprefix('torch.')}|torch {torch.__version__}"
            f"|probe {_PROBE_VERSION}")


def _timer(device):
    """Returns time_it(fn, reps) -> median seconds of one call."""
    if device.type == "cuda":
        def time_it(fn, reps):
            fn()
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            return statistics.median(times)
    else:
        def time_it(fn, reps):
            fn()
            return wall_clock_median(fn, reps)
    return time_it


def measure_ceiling(device="cpu", dtype=torch.float32, *, quick=False):
    """Probes the device: median copy bandwidth (bytes read + written) and matmul flop/s.

    On the CPU the compute figure is the faster of torch.mm and the same product run as a
    channels_last 1x1 conv (oneDNN): on the AMD EPYC this was developed on, MKL's sgemm reached
    176 GFLOP/s and oneDNN's 1x1 conv 350, and RegNet's convs run on oneDNN, so a matmul-only
    probe put them above 100% of the "ceiling"."""
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected a cpu or cuda device, got {device}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"dtype: expected a floating dtype, got {dtype}")
    gpu = device.type == "cuda"
    time_it = _timer(device)
    numel = (256 if gpu else 32 if quick else 64) * 2**20 // 4
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    reps = 5 if quick else 10
    t_copy = time_it(lambda: dst.copy_(src), reps)
    bandwidth = 2 * src.numel() * src.element_size() / t_copy
    n = 8192 if gpu else 768 if quick else 1536
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t_mm = time_it(lambda: torch.mm(a, b), reps)
    if not gpu and torch.backends.mkldnn.is_available():
        # [1, n, h, w] pixels x [n, n] weights: n^3 multiply-adds, as in the matmul.
        x = a.reshape(1, n, 32, n // 32).contiguous(memory_format=torch.channels_last)
        w = b.reshape(n, n, 1, 1)
        t_mm = min(t_mm, time_it(lambda: torch.conv2d(x, w), reps))
    return Ceiling(_device_key(device, dtype).split("|")[1], bandwidth, 2 * n ** 3 / t_mm,
                   "measured")


def device_ceiling(device="cpu", dtype=torch.float32, *, refresh=False):
    """Ceiling of a named GPU ("h100", "h200") or of a torch device (measured once, cached)."""
    if isinstance(device, str) and device.lower() in NOMINAL:
        return NOMINAL[device.lower()]
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected one of {sorted(NOMINAL)} or a torch device, "
                         f"got {device!r}") from exc
    key = _device_key(torch_device, dtype)
    path = cache_path()
    cache = {}
    if path.exists():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}  # a damaged cache is re-measured, not fatal
    if not refresh and key in cache:
        return Ceiling(**cache[key])
    ceiling = measure_ceiling(torch_device, dtype)
    cache[key] = asdict(ceiling)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home still gets the measurement, just not cached
    return ceiling
