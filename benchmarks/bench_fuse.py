"""fuse() on the CPU: fused RegNets against stock eager PyTorch and torch.compile, in one run.

For RegNetY-400MF and RegNetX-400MF at batch 8 x 224 and batch 32 x 128 (channels_last, float32):
  * inference images/s (eval, no grad): stock eager, fused, torch.compile (inductor, freezing=True);
  * training-step images/s (forward, cross-entropy, backward, SGD step; PyTorch's fused SGD, as
    fit() takes it): stock eager, fused, torch.compile (inductor).
Every variant runs once per round, rounds interleave all variants (so machine load hits them
alike), each round takes the median of --reps calls, and the report gives the median over rounds
of images/s and of the per-round ratios fused/eager and fused/compile. The goals of the issue
(fused inference >= 1.6x eager and >= 1.1x compile; fused training >= 1.3x eager) are reported as
met or not, never asserted. Writes benchmarks/results/fuse_cpu.json and .png.

    .venv/bin/python benchmarks/bench_fuse.py               # full run (81 s on the 2-core dev machine)
    .venv/bin/python benchmarks/bench_fuse.py --quick       # one small config, no compile: pipeline check
    .venv/bin/python benchmarks/bench_fuse.py --configs 1x224 --modes inference \
        --variants eager fused fused-module-calls --out benchmarks/results/fuse_cpu_batch1.json

--autocast bfloat16 runs every call under torch.autocast("cpu", dtype=torch.bfloat16) (the models
stay float32), the way CPUs with AVX-512 BF16 serve and train in 16 bits.

Variants `aoti` and `fused-aoti` (inference only, not in the default run) are the stock and the
fused model as deployed without Python: torch.export, then AOTInductor (freezing) packages
compiled for each input shape during the warm-up; `fused-aoti` is also reported against `aoti`:

    .venv/bin/python benchmarks/bench_fuse.py --modes inference --variants eager fused compile aoti \
        fused-aoti --out benchmarks/results/fuse_cpu_aoti.json

Variant `fused-module-calls` is the fused model with its blocks' lean inference off (every layer
through its module call, folded_inference.lean_blocks = False): the A/B of that path.

--exclude-kernels NAME... adds variant `fused-excluding`: the fused model with the CPU conv
autotuner choosing without those kernels (regnet_ext.ops.cpu_conv_autotune_excluding), so that
its ratio f/excl is the in-process A/B of those kernels inside the model:

    .venv/bin/python benchmarks/bench_fuse.py --configs 8x224 --modes training --variants fused \
        --exclude-kernels gemm_tiles --out /tmp/fuse_ab.json
"""
import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import (batch_resolution, check_model_names, check_out, check_positive, minor_faults,  # noqa: E402
                    output_file, sgd_implementations, write_json)
from regnet_ext.commands._malloc_option import add_tune_malloc_argument, apply_tune_malloc  # noqa: E402
from regnet_ext.nn import folded_inference  # noqa: E402
from regnet_ext.ops.cpu_autotune import (check_cpu_conv_kernel_names, cpu_conv_autotune_excluding,  # noqa: E402
                                          cpu_conv_kernel_names)
from regnet_ext.profiling.roofline import cpu_name, wall_clock_median  # noqa: E402
from regnet_ext.training import sgd  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("RegNetY-400MF", "RegNetX-400MF")
SHAPES = ((8, 224), (32, 128))  # (batch, resolution)
VARIANTS = ("eager", "fused", "compile")
ALL_VARIANTS = VARIANTS + ("fused-module-calls", "fused-excluding", "aoti", "fused-aoti")
FUSED_VARIANTS = ("fused", "fused-module-calls", "fused-excluding", "fused-aoti")
AOTI_VARIANTS = ("aoti", "fused-aoti")  # inference only: an AOTInductor package has no backward
MODES = ("inference", "training")
# The ratios reported, (variant, baseline) -> table heading: images/s of the variant over the
# baseline's, per round.
RATIOS = {("fused", "eager"): "f/eager", ("fused", "compile"): "f/comp", ("fused", "aoti"): "f/aoti",
          ("fused", "fused-module-calls"): "f/modcall", ("fused", "fused-excluding"): "f/excl",
          ("fused-aoti", "aoti"): "fa/aoti"}
GOALS = {("inference", "eager"): 1.6, ("inference", "compile"): 1.1, ("training", "eager"): 1.3}


class Case:
    """One (model, shape, mode, variant): a callable that runs one inference batch or train step."""

    def __init__(self, model_name, batch, resolution, mode, variant, model, autocast=None, excluded=()):
        self.model_name, self.batch, self.resolution = model_name, batch, resolution
        self.mode, self.variant = mode, variant
        self.autocast = autocast  # a dtype: every call runs under CPU autocast to it
        self.excluded = excluded  # variant fused-excluding: the kernels its calls leave out
        cl = torch.channels_last
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, resolution, resolution, generator=gen).contiguous(memory_format=cl)
        self.target = torch.randint(0, 1000, (batch,), generator=gen)
        self.model = model
        if mode == "training":
            self.optimizer = sgd(model.parameters(), lr=1e-3, momentum=0.9)
        self.per_round = []
        self.faults_per_call = []  # minor page faults per call, one figure per round

    @property
    def key(self):
        return (self.model_name, self.batch, self.resolution, self.mode)

    def run(self):
        if self.variant == "fused-module-calls":
            folded_inference.lean_blocks = False
            try:
                return self._run()
            finally:
                folded_inference.lean_blocks = True
        if self.variant == "fused-excluding":
            with cpu_conv_autotune_excluding(*self.excluded):
                return self._run()
        return self._run()

    def _run(self):
        if self.autocast is not None:
            with torch.autocast("cpu", dtype=self.autocast):
                return self._step()
        return self._step()

    def _step(self):
        if self.mode == "inference":
            with torch.no_grad():
                self.model(self.x)
            return
        self.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.target).backward()
        self.optimizer.step()


def build_cases(models, shapes, variants, modes=MODES, autocast=None, excluded=()):
    from regnet_ext.models import regnet
    from regnet_ext.nn import fuse

    cases = []
    for name in models:
        torch.manual_seed(0)
        base = regnet(name).to(memory_format=torch.channels_last)
        for mode in modes:
            built = {}
            for variant in variants:
                if mode == "training" and variant in AOTI_VARIANTS:
                    continue
                model = copy.deepcopy(base).train(mode == "training")
                if variant in FUSED_VARIANTS:
                    model = fuse(model)
                if variant == "compile":
                    model = _compiled(model, freezing=mode == "inference")
                elif variant in AOTI_VARIANTS:
                    model = _AotiPackages(model)
                built[variant] = model
            for batch, resolution in shapes:
                cases += [Case(name, batch, resolution, mode, v, m, autocast, excluded) for v, m in built.items()]
    return cases


def _compiled(model, freezing):
    from torch._inductor import config as inductor_config

    compiled = torch.compile(model, dynamic=False)

    def call(x):
        # freezing is read when a graph compiles: set it for this model's calls only.
        with inductor_config.patch(freezing=freezing):
            return compiled(x)

    return _CallableModel(call, model)


class _AotiPackages:
    """An eval model as torch.export + AOTInductor (freezing) deploy it: one package per input
    shape, compiled on the shape's first call (the warm-up) and then called instead of the model."""

    def __init__(self, model):
        self.model = model
        self.runners = {}
        self.directory = tempfile.TemporaryDirectory(prefix="bench_fuse_aoti_")  # removed at exit

    def __call__(self, x):
        key = (tuple(x.shape), x.dtype)
        if key not in self.runners:
            from torch._inductor import aoti_load_package

            from regnet_ext.deploy import aoti_package

            path = aoti_package(self.model, x, Path(self.directory.name) / f"package_{len(self.runners)}.pt2")
            self.runners[key] = aoti_load_package(path)
        return self.runners[key](x)


class _CallableModel:
    """A compiled function with the parameters() of the module it compiles (for the optimizer)."""

    def __init__(self, fn, module):
        self.fn, self.module = fn, module

    def __call__(self, x):
        return self.fn(x)

    def parameters(self):
        return self.module.parameters()


def measure(cases, rounds, reps, warmup, progress):
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        for _ in range(warmup):
            case.run()
        progress(f"warm-up {i + 1}/{len(cases)}: {case.model_name} b{case.batch}x{case.resolution} "
                 f"{case.mode} {case.variant} ({time.perf_counter() - t0:.1f} s)")
    for r in range(rounds):
        for case in cases:
            faults = minor_faults()
            case.per_round.append(case.batch / wall_clock_median(case.run, reps))
            case.faults_per_call.append((minor_faults() - faults) / reps)
        progress(f"round {r + 1}/{rounds} done")


def summarise(cases):
    rows, ratios = [], []
    groups = {}
    for case in cases:
        groups.setdefault(case.key, {})[case.variant] = case
        rows.append(dict(model=case.model_name, batch=case.batch, resolution=case.resolution,
                         mode=case.mode, variant=case.variant,
                         images_per_s=statistics.median(case.per_round), rounds=case.per_round,
                         page_faults_per_call=statistics.median(case.faults_per_call)))
    for (model, batch, resolution, mode), by_variant in groups.items():
        for variant, other in RATIOS:
            if variant not in by_variant or other not in by_variant:
                continue
            per_round = [f / o for f, o in zip(by_variant[variant].per_round, by_variant[other].per_round)]
            ratio = statistics.median(per_round)
            goal = GOALS.get((mode, other)) if variant == "fused" else None
            ratios.append(dict(model=model, batch=batch, resolution=resolution, mode=mode, variant=variant,
                               fused_vs=other, ratio=ratio, per_round=per_round, goal=goal,
                               goal_met=None if goal is None else ratio >= goal))
    return rows, ratios


def print_table(rows, ratios):
    variants = [v for v in ALL_VARIANTS if any(r["variant"] == v for r in rows)]
    pairs = [p for p in RATIOS if any((r["variant"], r["fused_vs"]) == p for r in ratios)]
    ips = {(r["model"], r["batch"], r["resolution"], r["mode"], r["variant"]): r["images_per_s"] for r in rows}
    rat = {(r["model"], r["batch"], r["resolution"], r["mode"], r["variant"], r["fused_vs"]): r["ratio"]
           for r in ratios}
    header = (f"{'model':<14} {'shape':<9} {'mode':<9} " + " ".join(f"{v[:10]:>10}" for v in variants) + " "
              + " ".join(f"{RATIOS[p]:>9}" for p in pairs))
    print(header)
    print("-" * len(header))
    for key in dict.fromkeys((r["model"], r["batch"], r["resolution"], r["mode"]) for r in rows):
        cells = [f"{ips[key + (v,)]:10.1f}" if key + (v,) in ips else f"{'-':>10}" for v in variants]
        ratio_cells = [f"{rat[key + p]:8.2f}x" if key + p in rat else f"{'-':>9}" for p in pairs]
        print(f"{key[0]:<14} {f'{key[1]}x{key[2]}':<9} {key[3]:<9} {' '.join(cells)} {' '.join(ratio_cells)}")
    faulting = [r for r in rows if r["page_faults_per_call"] >= 100]
    if faulting:  # fresh pages cost time outside any kernel: say where they were paid
        print("page faults per call (median over rounds): " + ", ".join(
            f"{r['model']} {r['batch']}x{r['resolution']} {r['mode']} {r['variant']} {r['page_faults_per_call']:.0f}"
            for r in faulting))


def plot(rows, ratios, path, dtype_label="float32"):
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("bench_fuse: the PNG needs matplotlib (pip install matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    axes = axes[0]
    colors = {"eager": "tab:gray", "fused": "tab:blue", "compile": "tab:purple", "fused-module-calls": "tab:cyan",
              "fused-excluding": "tab:olive", "aoti": "tab:brown", "fused-aoti": "tab:green"}
    for ax, mode in zip(axes, modes):
        keys = list(dict.fromkeys((r["model"], r["batch"], r["resolution"]) for r in rows if r["mode"] == mode))
        variants = [v for v in ALL_VARIANTS if any(r["variant"] == v and r["mode"] == mode for r in rows)]
        width = 0.8 / len(variants)
        for j, variant in enumerate(variants):
            values = [next((r["images_per_s"] for r in rows if (r["model"], r["batch"], r["resolution"]) == k
                            and r["mode"] == mode and r["variant"] == variant), 0.0) for k in keys]
            ax.bar([i + (j - (len(variants) - 1) / 2) * width for i in range(len(keys))], values, width, label=variant,
                   color=colors[variant])
        for i, k in enumerate(keys):
            # One line per baseline: side by side, neighbouring groups' labels ran into each other.
            text = "\n".join(f"{r['ratio']:.2f}x {RATIOS[r['variant'], r['fused_vs']]}" for r in ratios
                             if (r["model"], r["batch"], r["resolution"]) == k and r["mode"] == mode)
            ax.annotate(text, (i, 0), xytext=(0, -26), textcoords="offset points", ha="center", va="top",
                        fontsize=7)
        ax.set_xticks(range(len(keys)), [f"{m.removeprefix('RegNet')}\nb{b}x{s}" for m, b, s in keys], fontsize=8)
        ax.set_ylabel("images/s")
        ax.set_title(f"{mode} (fused ratio below bars)")
        ax.legend(fontsize=8)
    fig.suptitle(f"regnet_ext.fuse on {cpu_name()}, {torch.get_num_threads()} threads, {dtype_label} channels_last")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the ratio lines lie below the axes
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over rounds)")
    parser.add_argument("--reps", type=int, default=3, help="calls per variant per round (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first")
    parser.add_argument("--quick", action="store_true",
                        help="RegNetX-400MF, batch 4 x 64, no torch.compile, 2 rounds: checks the pipeline")
    add_tune_malloc_argument(parser, "regnet_ext.allocator.tune_malloc(use_mmap=False) first, so that no "
                                     "variant is timed with first-touch page faults (every variant shares "
                                     "the process, so all get it; recorded as malloc_tuned)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="NAME",
                        help=f"standard RegNet names (default: {' '.join(MODELS)})")
    parser.add_argument("--configs", nargs="+", type=batch_resolution, default=None, metavar="BATCHxRESOLUTION",
                        help="e.g. 1x224 (default: 8x224 32x128)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=list(VARIANTS),
                        help="fused-module-calls: fused with the blocks' lean inference off; "
                             "fused-excluding: see --exclude-kernels; aoti, fused-aoti: torch.export + "
                             "AOTInductor packages of the stock and fused model (inference only)")
    parser.add_argument("--exclude-kernels", nargs="+", default=[], metavar="NAME",
                        help="add variant fused-excluding, whose autotuner leaves these CPU conv kernels out "
                             f"(names: {', '.join(cpu_conv_kernel_names())})")
    parser.add_argument("--autocast", choices=["bfloat16"], default=None,
                        help="run every call under CPU autocast to this dtype (models stay float32)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem: writes <stem>.json and <stem>.png (default results/fuse_cpu; --quick: "
                             "results/fuse_cpu_quick; a stem ending in .json is taken without it)")
    args = parser.parse_args(argv)
    check_positive(parser, args, ("rounds", "reps", "warmup"))
    check_model_names(parser, "--models", args.models)

    try:
        check_cpu_conv_kernel_names(args.exclude_kernels)
    except ValueError as exc:
        parser.error(f"--exclude-kernels: {exc}")
    if args.exclude_kernels and "fused-excluding" not in args.variants:
        args.variants.append("fused-excluding")
    if "fused-excluding" in args.variants and not args.exclude_kernels:
        parser.error("--variants fused-excluding needs --exclude-kernels")
    if args.autocast and set(args.variants) & set(AOTI_VARIANTS):
        parser.error("--variants aoti/fused-aoti run without autocast (export the model in the dtype to serve)")
    models, shapes, variants = args.models, args.configs or SHAPES, args.variants
    if args.quick:
        models, shapes = ("RegNetX-400MF",), ((4, 64),)
        variants = ("eager", "fused") + (("fused-excluding",) if args.exclude_kernels else ())
        args.rounds, args.reps, args.warmup = 2, 1, 1
    if args.out is None:  # a quick pipeline check must not overwrite the committed results
        args.out = RESULTS / ("fuse_cpu_quick" if args.quick else "fuse_cpu")
    check_out(parser, args.out)
    json_path, png_path = output_file(args.out, ".json"), output_file(args.out, ".png")
    dtype_label = "float32" if args.autocast is None else f"{args.autocast} (autocast)"
    malloc_tuned = apply_tune_malloc(args, "bench_fuse.py", use_mmap=False)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    cases = build_cases(models, shapes, variants, args.modes, None if args.autocast is None else getattr(torch, args.autocast),
                        tuple(args.exclude_kernels))
    measure(cases, args.rounds, args.reps, args.warmup, progress=lambda s: print(s, file=sys.stderr, flush=True))
    rows, ratios = summarise(cases)
    print_table(rows, ratios)
    result = dict(
        benchmark="bench_fuse", cpu=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__,
        python=platform.python_version(), dtype=dtype_label, memory_format="channels_last",
        rounds=args.rounds, reps=args.reps, warmup=args.warmup, quick=args.quick, malloc_tuned=malloc_tuned,
        excluded_kernels=args.exclude_kernels,
        sgd=sgd_implementations([c.optimizer for c in cases if c.mode == "training"]),
        load_average_before=load_before, load_average_after=os.getloadavg(),
        wall_s=time.perf_counter() - t0, goals={f"{m} fused vs {o}": g for (m, o), g in GOALS.items()},
        results=rows, ratios=ratios)
    write_json(json_path, result)
    plot(rows, ratios, png_path, dtype_label)
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
