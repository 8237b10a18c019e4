"""`regnet-ext demo`: the main job, end to end, on the CPU (or the GPU when there is one)."""
import copy
import json
import statistics
import sys
from pathlib import Path

from ._checks import FUSE_MISSING, first_below_one, fuse_available, option_error, resolve_device
from ._malloc_option import add_tune_malloc_argument, apply_tune_malloc

HELP = ("The main job: list the 24 standard models with their complexity, build RegNetY-400MF "
        "(or --model) from the generator, fuse it, check its outputs against the stock model, "
        "profile it per stage (stock vs fused), compare images/s with EfficientNet-B0, and write "
        "PNG and JSON files to --out.")


MALLOC_TUNED = ("glibc malloc keeps freed memory and serves every block from its heap "
                "(regnet_ext.allocator.tune_malloc(use_mmap=False)): no model pays first-touch page faults")
MALLOC_DEFAULT = "malloc's own settings: large tensors may come from fresh pages on every call"


def add_arguments(parser):
    parser.add_argument("--model", default="RegNetY-400MF", help="standard model (default RegNetY-400MF)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--resolution", type=int, default=224, help="input resolution (default 224)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda or auto (default: cuda when available, else cpu)")
    parser.add_argument("--iters", type=int, default=5, help="profiled iterations per run (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--out", default="regnet_ext_demo", help="folder for PNG/JSON (default ./regnet_ext_demo)")
    parser.add_argument("--no-efficientnet", action="store_true", help="skip the EfficientNet-B0 comparison")
    add_tune_malloc_argument(parser, "keep freed memory and serve every block from the heap, so that "
                                     "no model is timed with first-touch page faults")


def _section(title):
    print(f"\n== {title}", flush=True)


def show_models():
    from .models import format_table, model_rows

    _section("Standard RegNet models (pycls generator, analytic complexity at 224x224)")
    print(format_table(model_rows(), 224))


def build(args):
    from ..models import AnyNet, STANDARD_MODELS, canonical_name, complexity, generate_regnet

    name = canonical_name(args.model)
    p = STANDARD_MODELS[name]
    design = generate_regnet(p.w0, p.wa, p.wm, p.depth, p.group_width)
    spec = design.to_spec(se_ratio=p.se_ratio, name=name)
    _section(f"{name} from the generator: w0={p.w0} wa={p.wa} wm={p.wm} d={p.depth} g={p.group_width}")
    print(f"per-block widths {list(design.block_widths)}")
    print(f"stages: depths {list(spec.depths)}, widths {list(spec.widths)}, group widths {list(spec.group_widths)}")
    c = complexity(spec, args.resolution)
    print(f"{c.flops / 1e6:.1f} M multiply-adds, {c.params / 1e6:.3f} M params, {c.acts / 1e6:.3f} M activations "
          f"at {args.resolution}x{args.resolution}")
    return AnyNet(spec)


def check_fused(model, x):
    """Fuses a copy and compares eval outputs; returns the fused model, or None on a mismatch."""
    import torch

    from ..nn import fuse
    from ..tolerances import full_float32

    fused, report = fuse(copy.deepcopy(model), report=True)
    _section("fuse(): swap fused blocks into the model")
    print(str(report).splitlines()[0])
    # Full float32 for the comparison: on CUDA, cuDNN's default TF32 alone differs by ~1e-3.
    with torch.inference_mode(), full_float32():
        ref, out = model(x), fused(x)
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    ok = err <= 1e-4
    print(f"fused vs stock outputs on a random batch: max relative difference {err:.2e} "
          f"({'equal within 1e-4' if ok else 'MISMATCH'})")
    return fused if ok else None


def profile_stages(model, args, device, out, malloc_tuned):
    import torch

    from ..profiling import plot_profiles, profile_stock_and_fused, stage_speedups

    shape = (args.batch, 3, args.resolution, args.resolution)
    _section(f"Per-stage profile, batch {args.batch}, {device}, stock vs fused (iterations interleaved)")
    stock, fused = profile_stock_and_fused(model, shape, device=device, dtype=torch.float32,
                                           iters=args.iters, warmup=1)
    print(stock.table())
    print()
    print(fused.table())
    speedups = stage_speedups(stock, fused)
    print("\nstock time / fused time per stage: "
          + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items()))
    plot_profiles([stock, fused], out / "profile.png")
    doc = {"stock": stock.to_json(), "fused": fused.to_json(), "speedups": speedups,
           "malloc_tuned": malloc_tuned}
    (out / "profile.json").write_text(json.dumps(doc, indent=1))


def compare_efficientnet(model, fused, x, args, out, malloc_tuned):
    import torch

    from ..allocator import counting_faults
    from ..profiling.timing import time_interleaved

    try:
        from torchvision.models import efficientnet_b0
    except ImportError:
        print("(torchvision is not installed: skipping the EfficientNet-B0 comparison)")
        return
    _section(f"images/s at batch {args.batch}, {args.resolution}px (interleaved rounds, medians)")
    effnet = efficientnet_b0(weights=None).eval().to(device=x.device, memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    faults = {}  # name -> minor page faults of each call

    def runner(name, m):
        def run():
            with torch.inference_mode():
                m(x)
            sync()
        return counting_faults(run, faults.setdefault(name, []))

    names = ("EfficientNet-B0 (stock)", f"{args.model} (stock)", f"{args.model} (fused)")
    candidates = {name: runner(name, m) for name, m in zip(names, (effnet, model, fused))}
    # Rounds count up in place on a terminal; in a log, one line once they are done.
    tty = sys.stdout.isatty()
    progress = (lambda r: print(f"  round {r + 1}/{args.rounds}", end="\r", flush=True)) if tty else None
    timed = time_interleaved(candidates, rounds=args.rounds, warmup=3, target_s=0, progress=progress)
    print(" " * 20 + "\r" if tty else f"  {args.rounds} interleaved rounds", end="" if tty else "\n")
    rates = {name: args.batch / t["median_s"] for name, t in timed.items()}
    faults = {name: statistics.median(counts) for name, counts in faults.items()}
    base = rates["EfficientNet-B0 (stock)"]
    for name, rate in rates.items():
        print(f"{name:<28} {rate:8.1f} images/s   {rate / base:5.2f}x EfficientNet-B0   "
              f"{faults[name]:8.0f} page faults per call")
    if not malloc_tuned and max(faults.values()) > 0:
        print("(a page fault cost about 1 us on the development VM: models that pay more of them "
              "look slower than they are; with --tune-malloc, the default on glibc, none pays any)")
    (out / "throughput.json").write_text(json.dumps(
        {"images_per_s": rates, "page_faults_per_call": faults, "malloc_tuned": malloc_tuned,
         "batch": args.batch, "resolution": args.resolution}, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh(list(rates), list(rates.values()), color=["tab:gray", "tab:blue", "tab:orange"])
    ax.set_xlabel("images/s (higher is better)")
    ax.set_title(f"inference, batch {args.batch}, {x.device.type}")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    plt.close(fig)


def _check(args):
    """The device the demo runs on; ValueError naming the option that is wrong."""
    from ..models import canonical_name

    error = first_below_one(args, ("batch", "resolution", "iters", "rounds"))
    if error:
        raise ValueError(error)
    canonical_name(args.model)
    device = resolve_device(args.device)
    if not fuse_available():  # the demo is about the fused model
        raise ValueError(f"{FUSE_MISSING}; `regnet-ext profile` runs without them")
    return device


def run(args):
    import torch

    try:  # before any work, as train and profile do
        device = _check(args)
    except ValueError as exc:
        print(f"regnet-ext demo: {option_error(exc, args, {'name': 'model'})}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:  # a file or an unwritable place: one line naming --out, before any work
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = "a file is there" if isinstance(exc, FileExistsError) else exc.strerror
        print(f"regnet-ext demo: --out: cannot make the folder {args.out} ({reason})", file=sys.stderr)
        return 2
    # Before any model runs: EfficientNet-B0's big activations would otherwise come from fresh
    # mmaps on every call (33,000-48,000 page faults per batch-8 forward here, the fused RegNet's
    # 0-1,500), and the comparison would measure glibc rather than the networks.
    malloc_tuned = apply_tune_malloc(args, "regnet-ext demo", use_mmap=False)
    torch.manual_seed(0)
    show_models()
    print(f"\nallocator: {MALLOC_TUNED if malloc_tuned else MALLOC_DEFAULT}")
    model = build(args).eval().to(device=device, memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    fused = check_fused(model, x)
    if fused is None:
        return 1
    profile_stages(model, args, device, out, malloc_tuned)
    if not args.no_efficientnet:
        compare_efficientnet(model, fused, x, args, out, malloc_tuned)
    print(f"\nwrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/", file=sys.stderr)
    return 0
