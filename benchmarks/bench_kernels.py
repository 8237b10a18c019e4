"""Kernel benchmark: regnet_ext's fused operators against stock PyTorch eager and torch.compile.

For every distinct conv+BN(+ReLU) shape of the chosen RegNets (default RegNetX-400MF,
RegNetY-400MF, RegNetY-4.0GF at 224x224; shapes come from the generator's block records) and
for their squeeze-excite shapes, at each batch size, it times in one run, interleaved (each
speedup is the median over rounds of the ratio within a round):

  ours     regnet_ext.ops.conv_bn_act / squeeze_excite
  eager    the same layers as nn modules (conv2d + batch_norm + relu [+ residual]; the SE module),
           in each --stock-layouts layout: channels_last (nhwc, default) and/or NCHW (nchw)
  compile  torch.compile (inductor) of the eager module; eval with freezing (BN folded)

in eval mode (no_grad forward) and training mode (forward + backward), on the CPU or a CUDA GPU
(--device), in each of --dtypes. Ours always runs channels_last, its fast layout. It prints a
table, and writes <out>.json and <out>.png (default benchmarks/results/kernels_<device>, see --out).

    .venv/bin/python benchmarks/bench_kernels.py               # full run (long: compiles each shape)
    .venv/bin/python benchmarks/bench_kernels.py --quick       # 4 shapes: ~1 minute (seconds with --no-compile)
    .venv/bin/python benchmarks/bench_kernels.py --ops squeeze_excite --batch 8 --no-compile
    .venv/bin/python benchmarks/bench_kernels.py --device cuda --dtypes float32 bfloat16 --stock-layouts nhwc nchw
"""
import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (DEVICES, DTYPES, check_dtypes, check_model_names, check_out, check_positive,  # noqa: E402
                    checked_device, cpu_conv_autotune_choices, device_record, format_table, hardware_name, machine_record,
                    output_file, print_autotune_summary, print_competing_load_warning, time_interleaved_on,
                    write_json, write_ratio_png)
from regnet_ext.commands._malloc_option import add_tune_malloc_argument, apply_tune_malloc  # noqa: E402
from regnet_ext.models.complexity import output_size  # noqa: E402
from regnet_ext.profiling.roofline import measure_ceiling  # noqa: E402

DEFAULT_MODELS = ("RegNetX-400MF", "RegNetY-400MF", "RegNetY-4.0GF")
OPS = ("conv_bn_act", "squeeze_excite")
MODES = ("eval", "train")
RESOLUTION = 224
STEM_WIDTH, STEM_STRIDE = 32, 2
STOCK_LAYOUTS = {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}
DEFAULT_DTYPE, DEFAULT_LAYOUT = "float32", "nhwc"


# ---- shapes, from the generator ----------------------------------------------------------

@dataclass(frozen=True)
class ConvShape:
    c_in: int
    c_out: int
    kernel: int
    stride: int
    groups: int
    size: int  # input height = width
    relu: bool
    residual: bool
    batch: int

    @property
    def group_width(self):
        return self.c_in // self.groups

    @property
    def flops(self):
        """The conv's floating-point operations as a direct conv counts them (2 per multiply-add)."""
        out, _ = output_size(self.size, self.size, self.stride)
        return 2 * self.batch * out * out * self.c_out * self.group_width * self.kernel ** 2

    @property
    def label(self):
        if self.c_in == 3:
            kind = "stem"
        elif self.groups == 1:
            kind = "dense"
        else:
            kind = "dw" if self.group_width == 1 else f"gw{self.group_width}"
        tail = ("+res" if self.residual else "") + ("+relu" if self.relu else "")
        return (f"N{self.batch} {self.c_in}->{self.c_out} k{self.kernel}s{self.stride} {kind} "
                f"{self.size}px{tail}")


@dataclass(frozen=True)
class SEShape:
    channels: int
    hidden: int
    size: int
    batch: int

    @property
    def label(self):
        return f"N{self.batch} C{self.channels} se{self.hidden} {self.size}px"


def model_specs(names):
    try:
        from regnet_ext.models.zoo import regnet_spec
    except ImportError:  # the zoo is optional here: the generator alone gives the same specs
        regnet_spec = None
    specs = []
    for name in names:
        if regnet_spec is None:
            raise RuntimeError(f"{name}: regnet_ext.models.zoo is not available")
        specs.append(regnet_spec(name))
    return specs


def block_shapes(spec, batch, resolution=RESOLUTION):
    """Yields the ConvShape and SEShape records of one network, in execution order."""
    size = (resolution + STEM_STRIDE - 1) // STEM_STRIDE
    yield ConvShape(spec.in_channels, spec.stem_width, 3, STEM_STRIDE, 1, resolution, True, False, batch)
    for b in spec.blocks():
        out_size = (size + b.stride - 1) // b.stride
        w = b.inner_width
        yield ConvShape(b.w_in, w, 1, 1, 1, size, True, False, batch)
        yield ConvShape(w, w, 3, b.stride, b.groups, size, True, False, batch)
        if b.se_width:
            yield SEShape(w, b.se_width, out_size, batch)
        if b.has_projection:
            yield ConvShape(b.w_in, b.w_out, 1, b.stride, 1, size, False, False, batch)
        # The block's last conv adds the shortcut and applies the final ReLU in its epilogue.
        yield ConvShape(w, b.w_out, 1, 1, 1, out_size, True, True, batch)
        size = out_size


@dataclass(frozen=True)
class Case:
    """Where and how a shape runs: device, dtype (names as in --dtypes), stock baseline layout."""
    device: torch.device
    dtype: str
    stock_layout: str

    @property
    def torch_dtype(self):
        return DTYPES[self.dtype]

    @property
    def memory_format(self):
        return STOCK_LAYOUTS[self.stock_layout]

    @property
    def tags(self):
        return case_tags(self.dtype, self.stock_layout)


def case_tags(dtype, stock_layout):
    """The settings that differ from the default run: they suffix row labels and summary keys, so
    a default float32 / nhwc run keeps the labels and keys of earlier results. The device is not a
    tag: a run has one, recorded in its machine record."""
    return [tag for tag, default in ((dtype, DEFAULT_DTYPE), (stock_layout, DEFAULT_LAYOUT)) if tag != default]


def row_case(row):
    """(dtype, stock layout) of a row; rows from before these options are float32 / nhwc."""
    return row.get("dtype", DEFAULT_DTYPE), row.get("stock_layout", DEFAULT_LAYOUT)


def distinct_shapes(model_names, batches, ops):
    seen, shapes = set(), []
    for batch in batches:
        for spec in model_specs(model_names):
            for shape in block_shapes(spec, batch):
                op = "conv_bn_act" if isinstance(shape, ConvShape) else "squeeze_excite"
                if op in ops and shape not in seen:
                    seen.add(shape)
                    shapes.append(shape)
    return shapes


# ---- the baselines as modules (eager, and what torch.compile compiles) ---------------------

class ConvBNAct(nn.Module):
    def __init__(self, s: ConvShape):
        super().__init__()
        self.conv = nn.Conv2d(s.c_in, s.c_out, s.kernel, s.stride, s.kernel // 2, groups=s.groups, bias=False)
        self.bn = nn.BatchNorm2d(s.c_out)
        self.relu = s.relu

    def forward(self, x, residual=None):
        y = self.bn(self.conv(x))
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


def _randomise_bn(bn):
    with torch.no_grad():  # non-trivial statistics, as in a trained network
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)


def _random(shape, case, requires_grad=False):
    """A stock-layout input on the case's device and dtype, drawn on the CPU in float32 so that
    every device and dtype sees the same values."""
    t = torch.randn(*shape).to(device=case.device, dtype=case.torch_dtype)
    return t.contiguous(memory_format=case.memory_format).requires_grad_(requires_grad)


def _ours(t):
    """Our operators run channels_last whatever the stock layout: t itself when it already is
    (nhwc rows share every tensor with the baselines), else a channels_last copy."""
    if t is None or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.detach().contiguous(memory_format=torch.channels_last).requires_grad_(t.requires_grad)


def _stock_module(module, mode, case):
    return module.to(device=case.device, dtype=case.torch_dtype,
                     memory_format=case.memory_format).train(mode == "train")


def conv_candidates(s: ConvShape, mode, case, use_compile):
    """name -> zero-argument callable for one conv shape, mode and case."""
    from regnet_ext.ops import conv_bn_act

    train = mode == "train"
    module = ConvBNAct(s)
    _randomise_bn(module.bn)
    module = _stock_module(module, mode, case)
    out_size = (s.size + s.stride - 1) // s.stride
    x = _random((s.batch, s.c_in, s.size, s.size), case, train and s.c_in != 3)
    residual = _random((s.batch, s.c_out, out_size, out_size), case, train) if s.residual else None
    grad = _random((s.batch, s.c_out, out_size, out_size), case)
    bn = module.bn
    # Our operator gets its own copy of the running statistics (training updates them in place).
    stats = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    our_x, our_residual, our_weight = _ours(x), _ours(residual), _ours(module.conv.weight)

    def ours():
        return conv_bn_act(our_x, our_weight, bn.weight, bn.bias, stats[0], stats[1],
                           stride=s.stride, groups=s.groups, training=train,
                           num_batches_tracked=stats[2], relu=s.relu, residual=our_residual)

    candidates = {"ours": ours, "eager": lambda: module(x, residual)}
    if use_compile:
        compiled = torch.compile(module)
        candidates["compile"] = lambda: compiled(x, residual)
    return _with_mode(candidates, train, grad, _ours(grad))


def se_candidates(s: SEShape, mode, case, use_compile):
    from regnet_ext.models.layers import SqueezeExcite
    from regnet_ext.ops import squeeze_excite

    train = mode == "train"
    module = _stock_module(SqueezeExcite(s.channels, s.hidden), mode, case)
    x = _random((s.batch, s.channels, s.size, s.size), case, train)
    grad = _random((s.batch, s.channels, s.size, s.size), case)
    r, e = module.reduce, module.expand
    our_x = _ours(x)
    candidates = {"ours": lambda: squeeze_excite(our_x, r.weight, r.bias, e.weight, e.bias),
                  "eager": lambda: module(x)}
    if use_compile:
        compiled = torch.compile(module)
        candidates["compile"] = lambda: compiled(x)
    return _with_mode(candidates, train, grad, _ours(grad))


def _with_mode(candidates, train, grad, our_grad):
    """eval: no_grad forward; train: forward + backward with a fixed output gradient (ours gets
    it in its own layout, as it gets its inputs)."""
    def wrap(name, fn):
        if train:
            g = our_grad if name == "ours" else grad
            return lambda: fn().backward(g)

        def infer():
            with torch.no_grad():
                return fn()
        return infer
    return {name: wrap(name, fn) for name, fn in candidates.items()}


# ---- running --------------------------------------------------------------------------------

def run_case(shape, mode, case, args):
    """One row: medians per candidate and the ratios, or the error that stopped it."""
    op = "conv_bn_act" if isinstance(shape, ConvShape) else "squeeze_excite"
    row = {"op": op, "mode": mode, "label": " ".join([shape.label] + case.tags),
           "device": case.device.type, "dtype": case.dtype, "stock_layout": case.stock_layout,
           "shape": asdict(shape)}
    torch.manual_seed(0)
    try:
        build = conv_candidates if op == "conv_bn_act" else se_candidates
        candidates = build(shape, mode, case, op in args.compile_ops)
        start = time.perf_counter()
        for fn in candidates.values():  # first calls compile; keep them out of the timing
            fn()
        if case.device.type == "cuda":
            torch.cuda.synchronize(case.device)
        row["setup_s"] = round(time.perf_counter() - start, 2)
        timings = time_interleaved_on(case.device, candidates, rounds=args.rounds, warmup=2,
                                      target_s=args.sample_s)
    except Exception as exc:  # one op's failure must not stop the others' rows
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return row
    row["median_ms"] = {k: v["median_s"] * 1e3 for k, v in timings.items()}
    row["rounds_ms"] = {k: [t * 1e3 for t in v["rounds_s"]] for k, v in timings.items()}
    # Each round times every candidate back to back, so the ratio within a round cancels the
    # machine's drift between rounds (these VMs change speed by 1.5x within minutes); the median
    # of those ratios is the speedup, as in bench_fuse.py.
    ours = timings["ours"]["rounds_s"]
    row["speedup"] = {f"vs_{k}": statistics.median(o / u for o, u in zip(v["rounds_s"], ours))
                      for k, v in timings.items() if k != "ours"}
    if op == "conv_bn_act" and mode == "eval":
        row["gflops"] = {k: shape.flops / v["median_s"] / 1e9 for k, v in timings.items()}
    return row


def _ratio_stats(rows, select, key):
    values = [r["speedup"][key] for r in rows if select(r) and key in r["speedup"]]
    if not values:
        return None
    return {"rows": len(values), "min": min(values), "median": statistics.median(values),
            "max": max(values)}


def _grouped_3x3_eval(r):
    sh = r["shape"]
    return (r["op"] == "conv_bn_act" and r["mode"] == "eval" and sh["kernel"] == 3
            and sh["c_in"] != 3 and sh["c_in"] // sh["groups"] <= 64)


GROUPED_GOAL_VS_EAGER = 1.5  # the goal for the grouped 3x3 rows in eval


def grouped_goal_misses(rows, ceiling_gflops):
    """The float32 / nhwc grouped 3x3 eval rows under the goal, each with our GFLOP/s and the
    GFLOP/s the goal takes (the goal times eager's, as a direct conv counts its flops), and
    whether that is above the measured compute ceiling: there no direct conv can reach the goal
    on this device, only one doing fewer multiplies (Winograd)."""
    misses = []
    for r in rows:
        if (_grouped_3x3_eval(r) and "gflops" in r and row_case(r) == (DEFAULT_DTYPE, DEFAULT_LAYOUT)
                and r["speedup"]["vs_eager"] < GROUPED_GOAL_VS_EAGER):
            needed = GROUPED_GOAL_VS_EAGER * r["gflops"]["eager"]
            misses.append({"label": r["label"], "vs_eager": r["speedup"]["vs_eager"],
                           "ours_gflops": r["gflops"]["ours"], "goal_gflops": needed,
                           "goal_above_ceiling": needed > ceiling_gflops})
    return misses


def summarise_case(rows, suffix=""):
    """The issue's goals for the rows of one (dtype, stock layout), as measured ratios (medians
    over the relevant rows); `suffix` ends every key ("" for float32 against nhwc)."""
    summary = {}
    for key in ("vs_eager", "vs_compile"):
        summary[f"grouped3x3_eval_gw<=64_{key}{suffix}"] = _ratio_stats(rows, _grouped_3x3_eval, key)
        for op in OPS:
            for mode in MODES:
                summary[f"{op}_{mode}_{key}{suffix}"] = _ratio_stats(
                    rows, lambda r: r["op"] == op and r["mode"] == mode, key)
    return summary


def summarise(rows):
    """summarise_case for every (dtype, stock layout) in the run (rows from before these options
    count as float32 / nhwc), then the rows slower than eager and the error count."""
    ok = [r for r in rows if "speedup" in r]
    summary = {}
    for case in dict.fromkeys(row_case(r) for r in rows):
        suffix = "".join(f"_{tag}" for tag in case_tags(*case))
        summary.update(summarise_case([r for r in ok if row_case(r) == case], suffix))
    summary["slower_than_eager"] = [f"{r['op']} {r['mode']} {r['label']}" for r in ok
                                    if r["speedup"].get("vs_eager", 1.0) < 1.0]
    summary["errors"] = len(rows) - len(ok)
    return summary


def print_rows(rows):
    headers = ["op", "mode", "shape", "ours ms", "eager ms", "compile ms", "x eager", "x compile"]
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["op"], r["mode"], r["label"], "error: " + r["error"][:60], "", "", "", ""])
            continue
        ms, sp = r["median_ms"], r["speedup"]
        table.append([r["op"], r["mode"], r["label"], f"{ms['ours']:.3f}", f"{ms['eager']:.3f}",
                      f"{ms['compile']:.3f}" if "compile" in ms else "-",
                      f"{sp['vs_eager']:.2f}", f"{sp['vs_compile']:.2f}" if "vs_compile" in sp else "-"])
    print(format_table(headers, table))


def print_goal_misses(doc):
    misses = doc["grouped_goal_misses"]
    if not misses:
        return
    print(f"grouped 3x3 eval rows under {GROUPED_GOAL_VS_EAGER}x eager: {len(misses)}; the GFLOP/s that "
          f"would take, against this run's compute ceiling of {doc['compute_ceiling_gflops']:.0f} "
          f"(the faster of a large matmul and the same product as a 1x1 conv):")
    for m in misses:
        where = "above the ceiling" if m["goal_above_ceiling"] else "under the ceiling"
        print(f"  {m['label']}: {m['vs_eager']:.2f}x, ours {m['ours_gflops']:.0f} GFLOP/s, "
              f"{GROUPED_GOAL_VS_EAGER}x needs {m['goal_gflops']:.0f} ({where})")


def plot(doc, path):
    panels = {}
    for op in OPS:
        for mode in MODES:
            rows = [r for r in doc["rows"] if r["op"] == op and r["mode"] == mode and "speedup" in r]
            if not rows:
                continue
            series = {"vs eager": [r["speedup"]["vs_eager"] for r in rows]}
            if any("vs_compile" in r["speedup"] for r in rows):
                series["vs torch.compile"] = [r["speedup"].get("vs_compile") for r in rows]
            panels[f"{op}, {mode}"] = {"labels": [r["label"] for r in rows], "series": series}
    m = doc["machine"]
    setting = f"{m['threads']} threads" if m.get("device", "cpu") == "cpu" else "CUDA"
    return write_ratio_png(path, panels, title=f"regnet_ext kernels on {hardware_name(m)} ({setting}, "
                                               f"torch {m['torch']}): time(baseline) / time(ours)")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="4 shapes, 3 rounds (about a minute; seconds with --no-compile): checks that everything runs")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--batch", nargs="+", type=int, default=None, help="batch sizes (default 1 8)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_MODELS)}")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where everything runs (default cpu; cuda needs a GPU)")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=[DEFAULT_DTYPE],
                   help="one row per shape, mode and dtype (default float32; float16 only with --device cuda)")
    p.add_argument("--stock-layouts", nargs="+", choices=list(STOCK_LAYOUTS), default=[DEFAULT_LAYOUT],
                   help="memory layouts of the eager / compile baselines, one row each: nhwc "
                        "(channels_last, default) and/or nchw (PyTorch's default layout); ours "
                        "always runs channels_last")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--compile-ops", nargs="+", choices=OPS, default=None,
                   help="ops that get the torch.compile baseline (default: all of --ops; compiling "
                        "every shape is what makes a full run long)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per row (default 15, quick 3)")
    p.add_argument("--sample-s", type=float, default=None,
                   help="seconds per timing sample (default 0.005, quick 0.001)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_tune_malloc_argument(p, "regnet_ext.allocator.tune_malloc(use_mmap=False) first, so that outputs of "
                                "several MB are not timed with first-touch page faults (as the model "
                                "benchmarks do; recorded as malloc_tuned)")
    p.add_argument("--out", default=None,
                   help="output path without extension: writes .json and .png (default "
                        "benchmarks/results/kernels_<device>[_<dtypes>][_<layouts>][_quick])")
    args = p.parse_args(argv)
    check_positive(p, args, ("batch", "rounds", "sample_s", "threads"))
    check_model_names(p, "--models", args.models)
    args.device = checked_device(p, args.device)
    check_dtypes(p, "--dtypes", args.dtypes, args.device)
    args.dtypes = list(dict.fromkeys(args.dtypes))
    args.stock_layouts = list(dict.fromkeys(args.stock_layouts))
    args.out = args.out or str(default_out(args.device, args.dtypes, args.stock_layouts, args.quick))
    check_out(p, args.out)
    args.batch = args.batch or ([1] if args.quick else [1, 8])
    args.compile_ops = [] if args.no_compile else (args.compile_ops or list(args.ops))
    args.models = args.models or (["RegNetY-400MF"] if args.quick else list(DEFAULT_MODELS))
    args.rounds = args.rounds or (3 if args.quick else 15)
    args.sample_s = args.sample_s or (0.001 if args.quick else 0.005)
    return args


def default_out(device, dtypes, stock_layouts, quick):
    """results/kernels_<device>, with the dtypes and layouts appended when they are not the
    default and _quick for --quick, so that other settings never overwrite the committed full
    float32 / nhwc results."""
    name = f"kernels_{device.type}"
    if dtypes != [DEFAULT_DTYPE]:
        name += "_" + "_".join(dtypes)
    if stock_layouts != [DEFAULT_LAYOUT]:
        name += "_" + "_".join(stock_layouts)
    return ROOT / "benchmarks" / "results" / (name + ("_quick" if quick else ""))


def quick_subset(shapes):
    """--quick: the stem, one grouped 3x3, one last conv with residual, one SE shape."""
    picks = []
    tests = [lambda s: isinstance(s, ConvShape) and s.c_in == 3,
             lambda s: isinstance(s, ConvShape) and s.kernel == 3 and s.c_in != 3,
             lambda s: isinstance(s, ConvShape) and s.residual,
             lambda s: isinstance(s, SEShape)]
    for test in tests:
        match = next((s for s in shapes if test(s) and s not in picks), None)
        if match is not None:
            picks.append(match)
    return picks


def main(argv=None):
    args = parse_args(argv)
    malloc_tuned = apply_tune_malloc(args, "bench_kernels.py", use_mmap=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    # Freezing folds BN into the conv for no_grad (eval) graphs; training graphs are unaffected.
    inductor_config.freezing = True
    # The compute ceiling the goal rows are set against, probed in this run (roofline.py).
    ceiling = measure_ceiling(args.device, quick=args.quick)
    shapes = distinct_shapes(args.models, args.batch, args.ops)
    if args.quick:
        shapes = quick_subset(shapes)
    cases = [Case(args.device, dtype, layout) for dtype in args.dtypes for layout in args.stock_layouts]
    rows, total = [], len(shapes) * len(cases) * len(args.modes)
    for shape in shapes:
        for case in cases:
            for mode in args.modes:
                row = run_case(shape, mode, case, args)
                rows.append(row)
                status = row.get("error") or "  ".join(f"{k} {v:.2f}x" for k, v in row["speedup"].items())
                print(f"[{len(rows)}/{total}] {row['op']} {mode} {row['label']}: {status}", flush=True)
    doc = {"benchmark": "kernels", "quick": args.quick, "models": args.models, "batches": args.batch,
           "modes": args.modes, "ops": args.ops, "compile": args.compile_ops,
           "resolution": RESOLUTION, "rounds": args.rounds, "device": args.device.type,
           "dtypes": args.dtypes, "stock_layouts": args.stock_layouts, "malloc_tuned": malloc_tuned,
           "machine": machine_record(**device_record(args.device)), "rows": rows,
           "summary": summarise(rows), "compute_ceiling_gflops": ceiling.flops_per_s / 1e9,
           "grouped_goal_misses": grouped_goal_misses(rows, ceiling.flops_per_s / 1e9),
           "cpu_conv_autotune": cpu_conv_autotune_choices()}
    print()
    print(f"on {args.device.type} ({hardware_name(doc['machine'])}); ours runs channels_last, the "
          f"baselines too unless the label says nchw")
    print_rows(rows)
    print()
    for key, value in doc["summary"].items():
        if key == "slower_than_eager":
            print(f"{key}: {len(value)} rows" + (f", e.g. {value[:5]}" if value else ""))
        elif isinstance(value, dict):
            print(f"{key}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in value.items()))
        elif value is not None:
            print(f"{key}: {value}")
    print_goal_misses(doc)
    print_autotune_summary(doc["cpu_conv_autotune"])
    print_competing_load_warning()
    json_path = write_json(output_file(args.out, ".json"), doc)
    png_path = plot(doc, output_file(args.out, ".png"))
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
