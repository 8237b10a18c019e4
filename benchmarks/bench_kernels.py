"""Kernel benchmark: regnet_ext's fused operators against stock PyTorch eager and torch.compile.

For every distinct conv+BN(+ReLU) shape of the chosen RegNets (default RegNetX-400MF,
RegNetY-400MF, RegNetY-4.0GF at 224x224; shapes come from the generator's block records) and
for their squeeze-excite shapes, at each batch size, it times in one run, interleaved, medians:

  ours     regnet_ext.ops.conv_bn_act / squeeze_excite
  eager    the same layers as nn modules (conv2d + batch_norm + relu [+ residual]; the SE module),
           channels_last
  compile  torch.compile (inductor) of the eager module; eval with freezing (BN folded)

in eval mode (no_grad forward) and training mode (forward + backward). It prints a table, and
writes <out>.json and <out>.png (default benchmarks/results/kernels_cpu).

    .venv/bin/python benchmarks/bench_kernels.py               # full run (long: compiles each shape)
    .venv/bin/python benchmarks/bench_kernels.py --quick       # 4 shapes: ~1 minute (seconds with --no-compile)
    .venv/bin/python benchmarks/bench_kernels.py --ops squeeze_excite --batch 8 --no-compile
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

from common import (format_table, machine_record, time_interleaved, write_json,  # noqa: E402
                    write_ratio_png)

DEFAULT_MODELS = ("RegNetX-400MF", "RegNetY-400MF", "RegNetY-4.0GF")
OPS = ("conv_bn_act", "squeeze_excite")
MODES = ("eval", "train")
RESOLUTION = 224
STEM_WIDTH, STEM_STRIDE = 32, 2


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


def _channels_last(t, requires_grad=False):
    return t.contiguous(memory_format=torch.channels_last).requires_grad_(requires_grad)


def conv_candidates(s: ConvShape, mode, use_compile):
    """name -> zero-argument callable for one conv shape and mode."""
    from regnet_ext.ops import conv_bn_act

    train = mode == "train"
    module = ConvBNAct(s).to(memory_format=torch.channels_last)
    _randomise_bn(module.bn)
    module.train(train)
    out_size = (s.size + s.stride - 1) // s.stride
    x = _channels_last(torch.randn(s.batch, s.c_in, s.size, s.size), train and s.c_in != 3)
    residual = _channels_last(torch.randn(s.batch, s.c_out, out_size, out_size), train) if s.residual else None
    grad = _channels_last(torch.randn(s.batch, s.c_out, out_size, out_size))
    bn = module.bn
    # Our operator gets its own copy of the running statistics (training updates them in place).
    stats = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]

    def ours():
        return conv_bn_act(x, module.conv.weight, bn.weight, bn.bias, stats[0], stats[1],
                           stride=s.stride, groups=s.groups, training=train,
                           num_batches_tracked=stats[2], relu=s.relu, residual=residual)

    candidates = {"ours": ours, "eager": lambda: module(x, residual)}
    if use_compile:
        compiled = torch.compile(module)
        candidates["compile"] = lambda: compiled(x, residual)
    return _with_mode(candidates, train, grad)


def se_candidates(s: SEShape, mode, use_compile):
    from regnet_ext.models.layers import SqueezeExcite
    from regnet_ext.ops import squeeze_excite

    train = mode == "train"
    module = SqueezeExcite(s.channels, s.hidden).to(memory_format=torch.channels_last).train(train)
    x = _channels_last(torch.randn(s.batch, s.channels, s.size, s.size), train)
    grad = _channels_last(torch.randn(s.batch, s.channels, s.size, s.size))
    r, e = module.reduce, module.expand
    candidates = {"ours": lambda: squeeze_excite(x, r.weight, r.bias, e.weight, e.bias),
                  "eager": lambda: module(x)}
    if use_compile:
        compiled = torch.compile(module)
        candidates["compile"] = lambda: compiled(x)
    return _with_mode(candidates, train, grad)


def _with_mode(candidates, train, grad):
    """eval: no_grad forward; train: forward + backward with a fixed output gradient."""
    def wrap(fn):
        if train:
            return lambda: fn().backward(grad)

        def infer():
            with torch.no_grad():
                return fn()
        return infer
    return {name: wrap(fn) for name, fn in candidates.items()}


# ---- running --------------------------------------------------------------------------------

def run_case(shape, mode, args):
    """One row: medians per candidate and the ratios, or the error that stopped it."""
    op = "conv_bn_act" if isinstance(shape, ConvShape) else "squeeze_excite"
    row = {"op": op, "mode": mode, "label": shape.label, "shape": asdict(shape)}
    torch.manual_seed(0)
    try:
        build = conv_candidates if op == "conv_bn_act" else se_candidates
        candidates = build(shape, mode, op in args.compile_ops)
        start = time.perf_counter()
        for fn in candidates.values():  # first calls compile; keep them out of the timing
            fn()
        row["setup_s"] = round(time.perf_counter() - start, 2)
        timings = time_interleaved(candidates, rounds=args.rounds, warmup=2, target_s=args.sample_s)
    except Exception as exc:  # one op's failure must not stop the others' rows
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return row
    row["median_ms"] = {k: v["median_s"] * 1e3 for k, v in timings.items()}
    row["rounds_ms"] = {k: [t * 1e3 for t in v["rounds_s"]] for k, v in timings.items()}
    ours = timings["ours"]["median_s"]
    row["speedup"] = {f"vs_{k}": v["median_s"] / ours for k, v in timings.items() if k != "ours"}
    return row


def summarise(rows):
    """The issue's goals, as measured ratios (medians over the relevant rows)."""
    ok = [r for r in rows if "speedup" in r]

    def ratios(select, key):
        values = [r["speedup"][key] for r in ok if select(r) and key in r["speedup"]]
        if not values:
            return None
        return {"rows": len(values), "min": min(values), "median": statistics.median(values),
                "max": max(values)}

    def grouped_3x3(r):
        sh = r["shape"]
        return (r["op"] == "conv_bn_act" and r["mode"] == "eval" and sh["kernel"] == 3
                and sh["c_in"] != 3 and sh["c_in"] // sh["groups"] <= 64)

    summary = {}
    for key in ("vs_eager", "vs_compile"):
        summary[f"grouped3x3_eval_gw<=64_{key}"] = ratios(grouped_3x3, key)
        for op in OPS:
            for mode in MODES:
                summary[f"{op}_{mode}_{key}"] = ratios(lambda r: r["op"] == op and r["mode"] == mode, key)
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
    return write_ratio_png(path, panels, title=f"regnet_ext kernels on {m['cpu']} ({m['threads']} threads, "
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
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--compile-ops", nargs="+", choices=OPS, default=None,
                   help="ops that get the torch.compile baseline (default: all of --ops; compiling "
                        "every shape is what makes a full run long)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per row (default 15, quick 3)")
    p.add_argument("--sample-s", type=float, default=None,
                   help="seconds per timing sample (default 0.005, quick 0.001)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernels_cpu"),
                   help="output path without extension: writes .json and .png")
    args = p.parse_args(argv)
    args.batch = args.batch or ([1] if args.quick else [1, 8])
    args.compile_ops = [] if args.no_compile else (args.compile_ops or list(args.ops))
    args.models = args.models or (["RegNetY-400MF"] if args.quick else list(DEFAULT_MODELS))
    args.rounds = args.rounds or (3 if args.quick else 15)
    args.sample_s = args.sample_s or (0.001 if args.quick else 0.005)
    return args


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
    if args.threads:
        torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    # Freezing folds BN into the conv for no_grad (eval) graphs; training graphs are unaffected.
    inductor_config.freezing = True
    shapes = distinct_shapes(args.models, args.batch, args.ops)
    if args.quick:
        shapes = quick_subset(shapes)
    rows, total = [], len(shapes) * len(args.modes)
    for shape in shapes:
        for mode in args.modes:
            row = run_case(shape, mode, args)
            rows.append(row)
            status = row.get("error") or "  ".join(f"{k} {v:.2f}x" for k, v in row["speedup"].items())
            print(f"[{len(rows)}/{total}] {row['op']} {mode} {shape.label}: {status}", flush=True)
    doc = {"benchmark": "kernels", "quick": args.quick, "models": args.models, "batches": args.batch,
           "modes": args.modes, "ops": args.ops, "compile": args.compile_ops,
           "resolution": RESOLUTION, "rounds": args.rounds,
           "machine": machine_record(), "rows": rows, "summary": summarise(rows)}
    print()
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
    json_path = write_json(Path(args.out).with_suffix(".json"), doc)
    png_path = plot(doc, Path(args.out).with_suffix(".png"))
    print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
