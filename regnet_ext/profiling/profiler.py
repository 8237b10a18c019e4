"""Per-stage profiler of a RegNet (ours, torchvision's or timm's), stock or fused.

Each unit (stem, every block, head) runs on its own between synchronisation points (CUDA events
on a GPU, the wall clock on a CPU), forward only or forward + backward (each unit's backward from
its own detached input). Times are medians over iterations of per-iteration sums. Flops and bytes
come from the traffic model for the schedule actually running (eager for a stock model,
"ours_ops" for a fused one, "ours_ops+pair" where blocks ran conv_pair_relu), kernel counts from
torch.profiler, and the roofline from a measured ceiling.
"""
import copy
import platform
import statistics
import sys
import time

import torch

from .quiet_profiler import quiet_profile
from .report import ProfileResult, stage_record
from .roofline import device_ceiling
from .schedules import FUSED_SCHEDULE, get_schedule, with_conv_pair
from .stages import model_units, spec_from_model
from .traffic import model_traffic

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Ops that launch no kernel of their own: views and metadata, and conversions that are no-ops
# unless they call a copying op (aten::_to_copy, aten::clone), which is then counted instead.
_NO_KERNEL_OPS = {
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::view", "aten::reshape",
    "aten::_reshape_alias", "aten::flatten", "aten::as_strided", "aten::expand", "aten::t",
    "aten::transpose", "aten::permute", "aten::detach", "aten::detach_", "aten::alias",
    "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice", "aten::size",
    "aten::stride", "aten::resize_", "aten::lift_fresh", "aten::result_type", "aten::to",
    "aten::contiguous", "aten::type_as", "aten::resolve_conj", "aten::resolve_neg",
}


def build_model(name, num_classes=1000):
    """A model by name: ours ("RegNetY-400MF", "regnety_004", ...), "torchvision:<name>" or
    "timm:<name>" (random weights; nothing is downloaded)."""
    if not isinstance(name, str):
        raise TypeError(f"model: expected a name, got {type(name).__name__}")
    source, _, arch = name.partition(":")
    if not arch:
        from ..models import regnet
        return regnet(name, num_classes=num_classes)
    if source == "torchvision":
        import torchvision
        # torchvision's own error ("Unknown model nope") names neither the option nor the source.
        if arch not in torchvision.models.list_models():
            raise ValueError(f"model: torchvision has no model {arch!r} (e.g. regnet_y_400mf)")
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if source == "timm":
        try:
            import timm
        except ImportError as exc:
            raise ImportError("model: timm models need `pip install timm`") from exc
        if not timm.is_model(arch):  # timm raises a bare RuntimeError("Unknown model (...)")
            raise ValueError(f"model: timm has no model {arch!r} (e.g. regnety_004)")
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    raise ValueError(f"model: expected NAME, torchvision:NAME or timm:NAME, got {name!r}")


def fuse_model(model):
    """regnet_ext.fuse(model), or a clear error when the fused path is not available."""
    try:
        from regnet_ext.nn import fuse
    except ImportError as exc:  # the compiled extension did not load
        raise RuntimeError("fused=True needs regnet_ext.fuse (regnet_ext.nn), which is not "
                           f"available: {exc}") from exc
    return fuse(model)


def _check_shape(input_shape):
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
    if (shape is None or len(shape) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ValueError(f"input_shape: expected (batch, channels, height, width) of positive "
                         f"ints, got {input_shape!r}")
    return shape


class _Clock:
    """Times regions: CUDA events on a GPU, the wall clock around synchronised regions on a CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.pending = []

    def time(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            self.pending.append((start, end))
            return out, lambda: start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        return out, lambda: seconds

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def _run_iteration(units, x, train, clock):
    """One pass over all units; returns {unit: (forward s, backward s)}."""
    fwd, bwd, saved = {}, {}, []
    for unit in units:
        if train:
            x = x.detach().requires_grad_(unit.name != "stem")
        y, fwd[unit.name] = clock.time(lambda: unit.run(x))
        saved.append((unit, x, y))
        x = y
    clock.sync()
    if train:
        grad = torch.randn_like(x)
        for unit, inp, out in reversed(saved):
            _, bwd[unit.name] = clock.time(lambda: out.backward(grad))
            grad = inp.grad
        clock.sync()
    return {name: (fwd[name](), bwd[name]() if name in bwd else 0.0) for name in fwd}


def _count_kernels(units, x, train, device):
    """Kernels launched per unit (CUDA: device kernels; CPU: outermost non-view operators)."""
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    counts = {}

    def count(fn):
        with quiet_profile(activities=activities) as prof:
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
        events = prof.events()
        if device.type == "cuda":
            n = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        else:
            n = sum(1 for e in events if _outermost_op(e))
        return out, n

    saved = []
    for unit in units:
        if train:
            x = x.detach().requires_grad_(unit.name != "stem")
        y, counts[unit.name] = count(lambda: unit.run(x))
        saved.append((unit, x, y))
        x = y
    if train:
        grad = torch.randn_like(x)
        for unit, inp, out in reversed(saved):
            _, n = count(lambda: out.backward(grad))
            counts[unit.name] += n
            grad = inp.grad
    return counts


def _launches_kernel(name):
    return "::" in name and not name.startswith("autograd::") and name not in _NO_KERNEL_OPS


def _outermost_op(event):
    """An operator that launches work and is not called by another such operator."""
    if not _launches_kernel(event.name):
        return False
    parent = event.cpu_parent
    while parent is not None:
        if _launches_kernel(parent.name):
            return False
        parent = parent.cpu_parent
    return True


def _block_kind(block):
    return (f"{'Y' if block.se_width else 'X'} block "
            f"{'stride 2, projection' if block.stride == 2 else 'projection' if block.has_projection else 'identity'}"
            f" w{block.w_out}")


def _check_args(input_shape, dtype, device, iters, warmup):
    shape = _check_shape(input_shape)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda requested but torch.cuda.is_available() is False")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected cpu or cuda, got {device}")
    for label, v, lo in (("iters", iters, 1), ("warmup", warmup, 0)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{label}: expected an int >= {lo}, got {v!r}")
    return shape, dtype, device


def _last_stage_size(spec, shape):
    """(h, w) of the last stage's output: the stem and every stage's first block stride."""
    from ..models.complexity import output_size

    h, w = output_size(shape[2], shape[3], 2)
    for stride in spec.strides:
        h, w = output_size(h, w, stride)
    return h, w


def _private_copy(model):
    """A module to profile without touching the caller's: a session sets the mode, moves and
    converts the model, fuses it, and in training steps update BN statistics and gradients."""
    return model if isinstance(model, str) else copy.deepcopy(model)


class _Session:
    """One model variant ready to run: its units, traffic and inputs; collects samples."""

    def __init__(self, model, shape, *, device, dtype, fused, train, schedule, channels_last,
                 name):
        if isinstance(model, str):
            name = name or model
            model = build_model(model)
        self.name = name or getattr(getattr(model, "spec", None), "name", "") or type(model).__name__
        self.spec = spec_from_model(model)  # read before fusing: fused blocks may hide their convs
        if shape[1] != self.spec.in_channels:
            raise ValueError(f"input_shape: the model takes {self.spec.in_channels} channels, "
                             f"got {shape[1]}")
        if train:  # else BatchNorm fails mid-run with torch's message, which names no input
            h, w = _last_stage_size(self.spec, shape)
            if shape[0] * h * w < 2:
                raise ValueError(f"input_shape: training needs more than one value per BatchNorm "
                                 f"channel, but batch {shape[0]} at {shape[2]}x{shape[3]} leaves "
                                 f"{h}x{w} in the last stage; use a batch >= 2 or a larger "
                                 "resolution")
        model = model.train(train)  # fuse() sees the mode it must serve (BN folded for inference)
        # A model fused already is profiled as fused (its label and traffic schedule say so).
        fused = fused or _fused_already(model)
        if fused:
            model = fuse_model(model)
        self.schedule = get_schedule(schedule or (FUSED_SCHEDULE if fused else "eager"))
        self.schedule_is_default = schedule is None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(device=device, dtype=dtype, memory_format=self.memory_format).train(train)
        self.units = model_units(model)
        self.traffic = model_traffic(self.spec, shape[0], (shape[2], shape[3]),
                                     schedule=self.schedule, training=train, dtype=dtype)
        self.shape, self.device, self.dtype = shape, device, dtype
        self.fused, self.train, self.channels_last = fused, train, channels_last
        self.clock = _Clock(device)
        self.samples = []

    def make_input(self):
        x = torch.randn(self.shape, device=self.device, dtype=self.dtype)
        return x.contiguous(memory_format=self.memory_format)

    def iteration(self, keep):
        with torch.set_grad_enabled(self.train):
            sample = _run_iteration(self.units, self.make_input(), self.train, self.clock)
        if keep:
            self.samples.append(sample)

    def kernels(self, count):
        if not count:
            return {u.name: 0 for u in self.units}
        with torch.set_grad_enabled(self.train):
            return _count_kernels(self.units, self.make_input(), self.train, self.device)

    def _account_conv_pair(self):
        """The default fused schedule with conv a inside conv b's kernel in the blocks whose last
        call ran conv_pair_relu (a size rule decides per call: regnet_ext/nn/conv_pair.py)."""
        if not (self.schedule_is_default and self.fused and not self.train):
            return
        pair_units = [u.name for u in self.units
                      if any(getattr(getattr(m, "_pair", None), "taken", False) for m in u.modules)]
        if pair_units:
            self.schedule = with_conv_pair(self.schedule, pair_units)
            self.traffic = model_traffic(self.spec, self.shape[0], (self.shape[2], self.shape[3]),
                                         schedule=self.schedule, training=False, dtype=self.dtype)

    def result(self, kernels, ceiling, warmup):
        self._account_conv_pair()
        units, spec, train, samples = self.units, self.spec, self.train, self.samples
        per_unit_traffic = self.traffic.per_unit()
        stage_of = {u.name: u.stage for u in units}
        kind_of = {"stem": "stem", "head": "head"}
        for b in spec.blocks():
            kind_of[f"s{b.stage + 1}.b{b.index + 1}"] = _block_kind(b)

        def grouped(key_of):
            groups = {}
            for u in units:
                groups.setdefault(key_of[u.name], []).append(u.name)
            return groups

        def median_of(names, part=None):
            def one(s):
                return sum(s[n][0] + s[n][1] if part is None else s[n][part] for n in names)
            return statistics.median(one(s) for s in samples)

        all_names = [u.name for u in units]
        total_s = median_of(all_names)

        def records(groups):
            out = []
            for key, names in groups.items():
                tr = sum((per_unit_traffic[n] for n in names[1:]), per_unit_traffic[names[0]])
                extra = dict(blocks=len(names))
                if train:
                    extra.update(forward_ms=1e3 * median_of(names, 0),
                                 backward_ms=1e3 * median_of(names, 1))
                out.append(stage_record(key, median_of(names), tr.flops, tr.bytes,
                                   sum(kernels[n] for n in names), total_s, ceiling, extra))
            return out

        stages = records(grouped(stage_of))
        block_kinds = [r for r in records(grouped(kind_of)) if r["name"] not in ("stem", "head")]
        unit_records = records({n: [n] for n in all_names})
        tot = self.traffic.total()
        total = stage_record("total", total_s, tot.flops, tot.bytes, sum(kernels.values()), total_s,
                        ceiling, dict(blocks=len(all_names)))
        shape, device = self.shape, self.device
        meta = dict(model=self.name, batch=shape[0], resolution=f"{shape[2]}x{shape[3]}",
                    device=str(device), dtype=str(self.dtype).removeprefix("torch."),
                    fused=bool(self.fused), schedule=self.schedule.name, train=bool(train),
                    iters=len(samples), warmup=warmup, channels_last=bool(self.channels_last),
                    torch=torch.__version__, threads=torch.get_num_threads(),
                    machine=platform.machine(),
                    timer="cuda events" if device.type == "cuda" else "wall clock, synchronised",
                    kernels_counted=("device kernels (torch.profiler)" if device.type == "cuda"
                                     else "outermost operators that compute (torch.profiler)"))
        ceiling_rec = dict(name=ceiling.name, source=ceiling.source,
                           gb_per_s=ceiling.bytes_per_s / 1e9,
                           gflops_per_s=ceiling.flops_per_s / 1e9)
        return ProfileResult(meta, stages, block_kinds, unit_records, total, ceiling_rec)


def _measure(sessions, iters, warmup, count_kernels, ceiling):
    """Runs the sessions' iterations interleaved (A, B, A, B, ...) and returns their results."""
    for i in range(warmup + iters):
        for session in sessions:
            session.iteration(keep=i >= warmup)
    kernels = [s.kernels(count_kernels) for s in sessions]
    ceiling = ceiling or device_ceiling(sessions[0].device, sessions[0].dtype)
    return [s.result(k, ceiling, warmup) for s, k in zip(sessions, kernels)]


def _fused_already(model):
    """Whether fuse() swapped fused modules into the model (their module is loaded only then)."""
    modules = sys.modules.get("regnet_ext.nn.modules")
    return modules is not None and any(isinstance(m, modules._HoldsStock) for m in model.modules())


def profile(model, input_shape, *, device="cpu", dtype=torch.float32, fused=False, train=False,
            iters=10, warmup=2, schedule=None, channels_last=True, count_kernels=True,
            ceiling=None, name=None):
    """Profiles ``model`` (a module or a name for build_model) per stage and per block kind.

    ``input_shape`` is (batch, channels, height, width). A module is profiled as a copy, so the
    caller's model keeps its mode, memory format, parameters, gradients and BN statistics.
    ``fused=True`` runs regnet_ext.fuse on the copy first (a model fused already is profiled as
    fused either way). ``schedule`` overrides the traffic
    schedule (default: "eager" stock, schedules.FUSED_SCHEDULE fused).
    ``ceiling`` is a roofline.Ceiling (default: this device, measured once and cached).
    Returns a ProfileResult (``.table()``, ``.to_json()``).

    The process's malloc is left as it is; on CPUs with glibc, stages with large activations may
    then be timed with first-touch page faults (regnet_ext.allocator.tune_malloc(use_mmap=False)
    first, as `regnet-ext profile` does, avoids them).
    """
    shape, dtype, device = _check_args(input_shape, dtype, device, iters, warmup)
    session = _Session(_private_copy(model), shape, device=device, dtype=dtype, fused=fused, train=train,
                       schedule=schedule, channels_last=channels_last, name=name)
    return _measure([session], iters, warmup, count_kernels, ceiling)[0]


def profile_stock_and_fused(model, input_shape, *, device="cpu", dtype=torch.float32,
                            train=False, iters=10, warmup=2, channels_last=True,
                            count_kernels=True, ceiling=None, name=None):
    """(stock, fused) ProfileResults of the same model, iterations interleaved so that both
    see the same machine conditions. ``model`` is a name or a module (profiled as two copies,
    as in profile()).
    Page faults as in profile(): with glibc's defaults the stock model paid about 9,400 per
    RegNetY-400MF batch-8 forward and the fused one none (2026-12-04)."""
    shape, dtype, device = _check_args(input_shape, dtype, device, iters, warmup)
    common = dict(device=device, dtype=dtype, train=train, schedule=None,
                  channels_last=channels_last, name=name)
    fused = _Session(_private_copy(model), shape, fused=True, **common)  # fails early if fuse() is missing
    stock = _Session(_private_copy(model), shape, fused=False, **common)
    return tuple(_measure([stock, fused], iters, warmup, count_kernels, ceiling))
