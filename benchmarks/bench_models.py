"""Model-level benchmark: RegNetX/RegNetY against torchvision's EfficientNet B0-B5 at matched flops.

Pairs (paper's matching): 400MF-B0, 600MF/800MF-B1, 1.6GF-B2, 3.2GF/4.0GF-B3/B4, 8.0GF-B5. RegNets
run at 224, each EfficientNet at its native resolution (B0 224, B1 240, B2 260, B3 300, B4 380,
B5 456). For every model: inference images/s (eval, no grad) and training images/s (forward,
cross-entropy, backward, SGD step: PyTorch's fused SGD where it takes the parameters, as fit()
takes it), peak memory of each, activations and flops per image (pycls conventions, counted with
hooks on the stock model). RegNets run stock, fused (regnet_ext.fuse,
when available) and torch.compile (inductor; freezing for inference). Rounds are interleaved
(every model and variant once per round, in one process) and medians are reported, with
per-round ratios to the group's EfficientNet. Writes JSON + PNG (images/s against activations and
against flops) to benchmarks/results/.

--device cuda runs everything on the GPU (each timed call ends with torch.cuda.synchronize; peak
memory from torch.cuda.max_memory_allocated). --dtype bfloat16 (or float16, CUDA only) converts
every model and input with .to(dtype) - parameters, buffers and optimizer state included - rather
than running under autocast: every variant then gets the same tensors (autocast would cast only
the ops on its list, so stock, fused and compiled models would see different dtypes), and the
training step is a pure low-precision step, not a mixed-precision recipe with float32 weights.

    .venv/bin/python benchmarks/bench_models.py            # full run: models_cpu.json/.png
    .venv/bin/python benchmarks/bench_models.py --quick    # < 1 minute: RegNetY-400MF vs B0
    .venv/bin/python benchmarks/bench_models.py --device cuda --dtype bfloat16
    .venv/bin/python benchmarks/bench_models.py --resume   # go on after an interrupted run

The JSON is rewritten after every group ("complete": false until the end), so an interrupted run
keeps what it measured and --resume runs only the groups it lacks (the earlier run's machine record
and autotuner choices go under "resumed_from").
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

from common import (DEVICES, DTYPES, check_dtypes, check_model_names, check_out, check_positive,  # noqa: E402
                    checked_device, counting_faults, cpu_conv_autotune_choices, device_record, hardware_name,
                    machine_record, output_file, print_autotune_summary, sgd_implementations,
                    synchronised, time_interleaved, write_json)
from regnet_ext.commands._malloc_option import add_tune_malloc_argument, apply_tune_malloc  # noqa: E402
from regnet_ext.models import canonical_name  # noqa: E402
from regnet_ext.training import sgd  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EFFICIENTNET_RESOLUTION = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456}
# (RegNet sizes, EfficientNets) matched by flops, as in the paper.
GROUPS = [
    (("400MF",), ("b0",)),
    (("600MF", "800MF"), ("b1",)),
    (("1.6GF",), ("b2",)),
    (("3.2GF", "4.0GF"), ("b3", "b4")),
    (("8.0GF",), ("b5",)),
]
VARIANTS = ("stock", "fused", "compile")


# ---------------------------------------------------------------- models and their complexity

def build_regnet(name):
    from regnet_ext.models import regnet
    return regnet(name)


def build_efficientnet(key):
    import torchvision
    return torchvision.models.get_model(f"efficientnet_{key}", weights=None)


def count_complexity(model, resolution):
    """(multiply-adds, activations) per image by pycls's conventions: conv and linear outputs,
    k*k*C_in/groups MACs per conv output (+1 with a bias)."""
    macs, acts = [0], [0]

    def conv_hook(m, inputs, out):
        per_out = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        macs[0] += out[0].numel() * (per_out + (1 if m.bias is not None else 0))
        acts[0] += out[0].numel()

    def linear_hook(m, inputs, out):
        macs[0] += out[0].numel() * (m.in_features + (1 if m.bias is not None else 0))
        acts[0] += out[0].numel()

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, resolution, resolution))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return macs[0], acts[0]


def fuse_or_reason(model):
    """(fused model, None) or (None, why not)."""
    from regnet_ext.profiling.profiler import fuse_model
    try:
        return fuse_model(model), None
    except (RuntimeError, ImportError, ValueError, NotImplementedError) as exc:
        return None, str(exc)


# ---------------------------------------------------------------- measurement

class Runner:
    """One model variant: its inference and (optionally) training steps on fixed random inputs."""

    def __init__(self, label, family, variant, infer_model, train_model, resolution, batch,
                 device, dtype, num_classes=1000):
        self.label, self.family, self.variant = label, family, variant
        self.resolution, self.batch = resolution, batch
        cl = torch.channels_last
        x = torch.randn(batch, 3, resolution, resolution)  # drawn on the CPU: same on every device
        self.x = x.to(device=device, dtype=dtype).contiguous(memory_format=cl)
        self.target = torch.randint(0, num_classes, (batch,)).to(device)
        self.infer_model, self.train_model = infer_model, train_model
        # One module may serve both: its mode is then set on every call (cheap next to a pass).
        self.shared = infer_model is train_model
        self.infer_model.eval()
        if train_model is not None:
            train_model.train()
        self.opt = None if train_model is None else sgd(train_model.parameters(), lr=1e-3, momentum=0.9)
        self.infer_times, self.train_times = [], []

    @property
    def trains(self):
        return self.train_model is not None

    def infer(self):
        if self.shared:
            self.infer_model.eval()
        with torch.inference_mode() if self.variant != "compile" else torch.no_grad():
            return self.infer_model(self.x)

    def train_step(self):
        if self.shared:
            self.train_model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.train_model(self.x), self.target)
        loss.backward()
        self.opt.step()
        return loss


def peak_memory_bytes(fn, device=torch.device("cpu")):
    """Peak of memory allocated during ``fn`` above what was allocated before it. CPU: running
    sum of every operator's own allocations and frees from torch.profiler, in start order (an
    allocation freed inside the same operator is not seen). CUDA: the caching allocator's peak,
    which sees every allocation, torch.compile's included."""
    if device.type == "cuda":
        return cuda_peak_memory_bytes(fn, device)
    from torch.profiler import ProfilerActivity

    from regnet_ext.profiling.quiet_profiler import quiet_profile
    with quiet_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def cuda_peak_memory_bytes(fn, device):
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# ---------------------------------------------------------------- the benchmark

def plan(args):
    """[(group index, group label, [(label, family, builder argument, resolution)])]."""
    groups = []
    for index, (sizes, effs) in enumerate(GROUPS):
        if args.quick:
            if sizes != ("400MF",):
                continue
            sizes = ("400MF",)
        members = []
        for size in sizes:
            for family in args.families:
                members.append((f"RegNet{family}-{size}", "regnet", f"RegNet{family}-{size}",
                                args.resolution or 224))
        for key in effs:
            members.append((f"EfficientNet-{key.upper()}", "efficientnet", key,
                            args.resolution or EFFICIENTNET_RESOLUTION[key]))
        label = "/".join(sizes) + " vs " + "/".join(k.upper() for k in effs)
        groups.append((index, label, members))
    return groups


def build_runners(members, args, train, log):
    """Runners for every member and variant; ``train``: whether training is measured."""
    runners, info = [], {}
    dtype = DTYPES[args.dtype]
    place = dict(device=args.device, dtype=dtype, memory_format=torch.channels_last)
    for label, family, arg, resolution in members:
        inputs = dict(resolution=resolution, batch=args.batch, device=args.device, dtype=dtype)
        t0 = time.perf_counter()
        stock = build_regnet(arg) if family == "regnet" else build_efficientnet(arg)
        macs, acts = count_complexity(stock, resolution)
        params = sum(p.numel() for p in stock.parameters())
        info[label] = dict(family=family, resolution=resolution, macs=macs, acts=acts,
                           params=params, variants={})
        stock = stock.to(**place)
        runners.append(Runner(label, family, "stock", stock, stock if train else None, **inputs))
        info[label]["variants"]["stock"] = dict(available=True)
        if family == "regnet" and "fused" in args.variants:
            infer_fused, why = fuse_or_reason(build_regnet(arg).eval())
            info[label]["variants"]["fused"] = dict(available=why is None, reason=why)
            if why is None:
                train_fused = fuse_or_reason(build_regnet(arg).train())[0] if train else None
                runners.append(Runner(label, family, "fused", infer_fused.to(**place),
                                      train_fused.to(**place) if train else None, **inputs))
        if (family == "regnet" and "compile" in args.variants
                and (args.compile_models is None or label in args.compile_models)):
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True  # inference: fold BN and constants into the convs
            infer_c = torch.compile(build_regnet(arg).eval().to(**place))
            train_c = torch.compile(build_regnet(arg).train().to(**place)) if train else None
            runners.append(Runner(label, family, "compile", infer_c, train_c, **inputs))
            info[label]["variants"]["compile"] = dict(available=True)
        log(f"  built {label} ({time.perf_counter() - t0:.1f}s)")
    return runners, info


def run_group(index, label, members, args, log):
    train = args.train_groups is None or index in args.train_groups
    runners, info = build_runners(members, args, train, log)
    device = args.device
    for r in runners:  # warm-up: first calls compile, pick kernels and fill caches
        t0 = time.perf_counter()
        synchronised(r.infer, device)()
        if r.trains:
            synchronised(r.train_step, device)()
        rec = info[r.label]["variants"][r.variant]
        if r.variant == "compile":
            rec["warmup_s"] = time.perf_counter() - t0
        if r.variant == "compile" and device.type == "cpu":  # invisible to torch.profiler
            rec["peak_memory"] = "not measured: compiled code allocates outside torch.profiler"
            continue
        rec["peak_infer_bytes"] = peak_memory_bytes(r.infer, device)
        if r.trains:
            rec["peak_train_bytes"] = peak_memory_bytes(r.train_step, device)
    # Interleaved rounds (common.time_interleaved rotates the order), inference then training;
    # target_s=0 makes each sample one call: a model step is long enough to time alone (on a GPU
    # each call ends with a synchronize, so the sample holds the step's GPU work).
    faults = {}  # (kind, runner index) -> minor page faults per call
    for kind, attr in (("infer", "infer_times"), ("train", "train_times")):
        fns = {i: counting_faults(synchronised(r.infer if kind == "infer" else r.train_step, device),
                                  faults.setdefault((kind, i), []))
               for i, r in enumerate(runners) if kind == "infer" or r.trains}
        if not fns:
            continue
        timed = time_interleaved(fns, rounds=args.rounds, warmup=0, target_s=0)
        for i, t in timed.items():
            setattr(runners[i], attr, t["rounds_s"])
        log(f"  {kind}: {args.rounds} interleaved rounds done")
    # Per-round ratios against the group's first EfficientNet, then medians.
    reference = next(r for r in runners if r.family == "efficientnet")
    for i, r in enumerate(runners):
        rec = info[r.label]["variants"][r.variant]
        rec.update({f"{kind}_page_faults_per_call": statistics.median(faults[kind, i])
                    for kind in ("infer", "train") if faults.get((kind, i))})
        rec.update(infer_images_per_s=args.batch / statistics.median(r.infer_times),
                   infer_round_s=r.infer_times, speedup_reference=reference.label,
                   infer_speedup=statistics.median(
                       a / b for a, b in zip(reference.infer_times, r.infer_times)))
        if r.trains:
            rec.update(sgd=sgd_implementations([r.opt]),
                       train_images_per_s=args.batch / statistics.median(r.train_times),
                       train_round_s=r.train_times,
                       train_speedup=statistics.median(
                           a / b for a, b in zip(reference.train_times, r.train_times)))
    return dict(group=label, trained=train, models=info)


def print_group(group):
    print(f"\n== {group['group']}" + ("" if group["trained"] else " (inference only)"))
    print(f"{'model':20} {'variant':8} {'res':>4} {'GMACs':>6} {'Macts':>6} {'infer im/s':>10} "
          f"{'x ref':>6} {'train im/s':>10} {'x ref':>6} {'peak inf MB':>11} {'peak trn MB':>11}")

    def num(v, key, width, scale=1.0):
        return f"{v[key] / scale:>{width}.2f}" if key in v else f"{'-':>{width}}"

    for label, m in group["models"].items():
        for variant, v in m["variants"].items():
            if not v.get("available"):
                print(f"{label:20} {variant:8} unavailable: {v.get('reason')}")
                continue
            print(f"{label:20} {variant:8} {m['resolution']:>4} {m['macs'] / 1e9:>6.2f} "
                  f"{m['acts'] / 1e6:>6.2f} {num(v, 'infer_images_per_s', 10)} "
                  f"{num(v, 'infer_speedup', 6)} {num(v, 'train_images_per_s', 10)} "
                  f"{num(v, 'train_speedup', 6)} {num(v, 'peak_infer_bytes', 11, 1e6)} "
                  f"{num(v, 'peak_train_bytes', 11, 1e6)}")


def plot(doc, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot: needs matplotlib (`pip install matplotlib`)") from exc
    style = {("regnet", "stock"): ("o", "tab:blue"), ("regnet", "fused"): ("s", "tab:green"),
             ("regnet", "compile"): ("^", "tab:purple"),
             ("efficientnet", "stock"): ("D", "tab:red")}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, xlabel in ((axes[0], "acts", "activations per image (millions)"),
                            (axes[1], "macs", "multiply-adds per image (GMACs)")):
        scale = 1e6 if key == "acts" else 1e9
        seen = set()
        for group in doc["groups"]:
            for label, m in group["models"].items():
                for variant, v in m["variants"].items():
                    if not v.get("available"):
                        continue
                    marker, color = style[(m["family"], variant)]
                    name = f"{'RegNet' if m['family'] == 'regnet' else 'EfficientNet'} {variant}"
                    ax.scatter(m[key] / scale, v["infer_images_per_s"], marker=marker, c=color,
                               label=None if name in seen else name)
                    seen.add(name)
                    if variant == "stock":
                        ax.annotate(label.replace("EfficientNet-", "EN-").replace("RegNet", ""),
                                    (m[key] / scale, v["infer_images_per_s"]), fontsize=6,
                                    xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"inference images/s (batch {doc['batch']}, {doc.get('dtype', 'float32')})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = doc["machine"]
    setting = f"{m['threads']} threads" if m.get("device", "cpu") == "cpu" else "CUDA"
    fig.suptitle(f"RegNet vs EfficientNet on {hardware_name(m)} "
                 f"({setting}){' - quick' if doc['quick'] else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_out(device, dtype, quick):
    """results/models_<device>[_<dtype>][_quick]: other settings never overwrite models_cpu."""
    name = f"models_{device.type}" + ("" if dtype == "float32" else f"_{dtype}")
    return RESULTS / (name + ("_quick" if quick else ""))


# What an earlier run recorded about itself, kept under "resumed_from" when --resume takes its
# groups: the date and machine its groups were measured on and its autotuner's choices.
RUN_RECORD_KEYS = ("machine", "elapsed_s", "cpu_conv_autotune", "resumed_from")


def resumed_run(json_path, settings, log):
    """({group label: record}, the earlier run's RUN_RECORD_KEYS) from an earlier run's JSON, if it
    was made with the same settings; ValueError if it was not."""
    try:
        earlier = json.loads(Path(json_path).read_text())
    except FileNotFoundError:
        log(f"--resume: no {json_path} yet, starting afresh")
        return {}, {}
    differing = sorted(k for k, v in settings.items() if earlier.get(k) != v)
    if earlier.get("benchmark") != "bench_models" or differing:
        raise ValueError(f"--resume: {json_path} was written with other settings ({', '.join(differing)}); "
                         "use another --out or drop --resume")
    groups = {g["group"]: g for g in earlier.get("groups", [])}
    log(f"--resume: kept {len(groups)} group(s) from {json_path}: {', '.join(groups) or '-'}")
    return groups, {k: earlier[k] for k in RUN_RECORD_KEYS if k in earlier}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="RegNetY-400MF vs EfficientNet-B0 at batch 2, 128px, 2 rounds, "
                             "no torch.compile: under a minute (checks the pipeline, not speed)")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (quick: 2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds, one call per model each (default 3; quick: 2)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="override every model's resolution (default: native; quick: 128)")
    parser.add_argument("--families", nargs="+", default=None, choices=("X", "Y"),
                        help="RegNet families (default X Y; quick: Y)")
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                        help="RegNet variants (default all; quick: stock fused)")
    parser.add_argument("--groups", nargs="+", type=int, default=None,
                        help=f"indices of the matched groups to run (0-{len(GROUPS) - 1})")
    parser.add_argument("--train-groups", nargs="*", type=int, default=None,
                        help="measure training only for these group indices (default: all); "
                             "the big groups' training steps take minutes on a small CPU")
    parser.add_argument("--compile-models", nargs="*", default=None,
                        help="RegNets to torch.compile (default: all in the run); compiling "
                             "takes minutes per model on a small CPU")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where the models run (default cpu; cuda needs a GPU)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="models and inputs converted with .to(dtype) (default float32; "
                             "float16 only with --device cuda)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: torch's); on a shared, loaded machine "
                             "1 thread avoids OpenMP oversubscription")
    add_tune_malloc_argument(parser, "regnet_ext.allocator.tune_malloc(use_mmap=False) first, so that no "
                                     "model is timed with first-touch page faults (recorded as malloc_tuned)")
    parser.add_argument("--out", default=None, help="output stem (default results/models_<device>"
                                                    "[_<dtype>][_quick]); writes .json and .png")
    parser.add_argument("--resume", action="store_true",
                        help="keep the groups an earlier, interrupted run with the same settings "
                             "wrote to the --out JSON (written after every group) and run the rest")
    args = parser.parse_args(argv)
    check_positive(parser, args, ("batch", "rounds", "resolution", "threads"))
    args.device = checked_device(parser, args.device)
    check_dtypes(parser, "--dtype", [args.dtype], args.device)
    quick = args.quick
    args.batch = args.batch or (2 if quick else 8)
    args.rounds = args.rounds or (2 if quick else 3)
    args.resolution = args.resolution or (128 if quick else None)
    args.families = args.families or (["Y"] if quick else ["X", "Y"])
    args.variants = args.variants or (["stock", "fused"] if quick else list(VARIANTS))
    if args.compile_models:  # matched against the run's names: a misspelt one compiled nothing
        check_model_names(parser, "--compile-models", args.compile_models)
        args.compile_models = [canonical_name(name) for name in args.compile_models]
        in_run = [label for _, _, members in plan(args) for label, family, _, _ in members
                  if family == "regnet"]
        missing = [name for name in args.compile_models if name not in in_run]
        if missing:
            parser.error(f"--compile-models: {', '.join(missing)} not in this run (its RegNets: "
                         f"{', '.join(in_run)})")
    out = Path(args.out) if args.out else default_out(args.device, args.dtype, quick)
    check_out(parser, out)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_tuned = apply_tune_malloc(args, "bench_models.py", use_mmap=False)
    groups = every_group = plan(args)
    if args.groups is not None:
        bad = [i for i in args.groups if not 0 <= i < len(GROUPS)]
        if bad:
            parser.error(f"--groups: expected indices in 0-{len(GROUPS) - 1}, got {bad}")
        groups = [g for g in groups if g[0] in args.groups]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    torch.manual_seed(0)
    t_start = time.perf_counter()
    settings = dict(quick=quick, batch=args.batch, rounds=args.rounds, resolution=args.resolution,
                    device=args.device.type, dtype=args.dtype, variants=args.variants,
                    families=args.families, compile_models=args.compile_models,
                    train_groups=args.train_groups)
    doc = dict(benchmark="bench_models", **settings, malloc_tuned=malloc_tuned,
               machine=machine_record(load_average_start=os.getloadavg(),
                                      **device_record(args.device)), groups=[], complete=False)
    json_path, png_path = output_file(out, ".json"), output_file(out, ".png")
    try:
        done, earlier_run = resumed_run(json_path, settings, log) if args.resume else ({}, {})
    except ValueError as exc:  # a usage error: exit 2, as argparse's (SystemExit(message) gave 1)
        parser.error(str(exc))
    doc["resumed_groups"] = sorted(done)  # measured by the earlier run, in its conditions
    if done:
        doc["resumed_from"] = earlier_run
    print(f"on {args.device.type} ({hardware_name(doc['machine'])}), {args.dtype}, batch {args.batch}")
    # --resume keeps the earlier groups that --groups leaves out, in their place: the rewritten
    # JSON held only this run's groups (--groups 4 --resume dropped groups 0-3 from the file).
    for index, label, members in (g for g in every_group if g in groups or g[1] in done):
        if label in done:
            group = done[label]
        else:
            log(f"group {label}")
            group = run_group(index, label, members, args, log)
        doc["groups"].append(group)
        print_group(group)
        write_json(json_path, doc)  # after every group: an interrupted run keeps what it measured
    doc["machine"]["load_average_end"] = os.getloadavg()
    doc["elapsed_s"] = time.perf_counter() - t_start
    doc["cpu_conv_autotune"] = cpu_conv_autotune_choices()
    print_autotune_summary(doc["cpu_conv_autotune"])
    doc["complete"] = True
    write_json(json_path, doc)
    plot(doc, png_path)
    print(f"\nwritten {json_path} and {png_path} ({doc['elapsed_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
