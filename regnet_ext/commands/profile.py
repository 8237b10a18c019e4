"""`regnet-ext profile`: per-stage time, flops, bytes, GB/s and roofline share of a RegNet."""
import json
import os
import sys

from .._paths import check_output_path, plot_path, replaced_whole
from ._checks import (FUSE_MISSING, MODEL_BY_NAME_HELP, first_below_one, fuse_available, option_error,
                      resolve_device)
from ._malloc_option import add_tune_malloc_argument, apply_tune_malloc

HELP = ("Profile a RegNet per stage and block kind: time, flops, bytes moved (traffic model), "
        "GFLOP/s, GB/s, share of the device roofline, kernels launched.")


def add_arguments(parser):
    parser.add_argument("--model", default="RegNetY-400MF", help=MODEL_BY_NAME_HELP)
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--resolution", type=int, default=224, help="input side (default 224)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="device to profile on (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="dtype of the model and input (default float32)")
    parser.add_argument("--fused", action="store_true", help="run regnet_ext.fuse(model) first")
    parser.add_argument("--train", action="store_true", help="forward + backward (BN in training mode)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (default: torch's)")
    add_tune_malloc_argument(parser, "keep freed memory and serve every block from the heap, so that "
                                     "no stage is timed with first-touch page faults")
    parser.add_argument("--remeasure", action="store_true",
                        help="probe the device's bandwidth and compute ceilings again instead of "
                             "using the cached figures")
    parser.add_argument("--schedule", default=None,
                        help="traffic schedule to account bytes with (default: eager, or "
                             "ours_ops with --fused; also: compile, ours = the design target)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write JSON (to stdout when no PATH is given)")
    parser.add_argument("--plot", default=None, metavar="PATH",
                        help="PNG of stacked stage times, stock and fused side by side "
                             "(profiles both, interleaved, when fuse() is available; else stock "
                             "only, with a note on stderr)")


def run(args):
    from ..profiling import (get_schedule, plot_profiles, profile, profile_stock_and_fused,
                             stage_speedups)

    error = first_below_one(args, ("batch", "resolution", "iters", "threads"))
    if error is None and args.warmup < 0:
        error = f"--warmup: expected an int >= 0, got {args.warmup}"
    if error is None:  # before --remeasure's probe fails in torch's words
        try:
            resolve_device(args.device)
        except ValueError as exc:
            error = str(exc)
    if error is None and args.fused and not fuse_available():
        error = f"--fused: {FUSE_MISSING}; profile without --fused"
    if error is None:
        try:  # before the profiling, not with a traceback after it
            if args.schedule is not None:
                get_schedule(args.schedule)
            check_output_path("--json", None if args.json == "-" else args.json)
            if args.plot is not None:  # the file matplotlib writes: ".png" added to a bare name
                args.plot = plot_path(args.plot, "--plot")
            check_output_path("--plot", args.plot)
            json_path = None if args.json in (None, "-") else args.json
            if (args.plot is not None and json_path is not None
                    and os.path.realpath(json_path) == os.path.realpath(args.plot)):
                raise ValueError(f"--json: {json_path} is also the --plot file; expected two "
                                 "different paths")
        except ValueError as exc:
            error = _option_error(exc, args)
    if error:
        print(f"regnet-ext profile: {error}", file=sys.stderr)
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    malloc_tuned = apply_tune_malloc(args, "regnet-ext profile", use_mmap=False)
    common = dict(device=args.device, dtype=args.dtype, train=args.train, iters=args.iters,
                  warmup=args.warmup)
    if args.remeasure:
        from ..profiling import device_ceiling
        from ..profiling.profiler import DTYPES
        try:
            common["ceiling"] = device_ceiling(args.device, DTYPES[args.dtype], refresh=True)
        except (ValueError, RuntimeError) as exc:
            print(f"regnet-ext profile: {_option_error(exc, args)}", file=sys.stderr)
            return 2
    shape = (args.batch, 3, args.resolution, args.resolution)
    result = other = None
    if args.plot and args.schedule is not None:  # a schedule accounts one variant's bytes
        print(f"regnet-ext profile: --plot: profiling the {'fused' if args.fused else 'stock'} "
              f"model only; --schedule {args.schedule} applies to a single run", file=sys.stderr)
    elif args.plot and not fuse_available():
        print(f"regnet-ext profile: --plot: profiling stock only; {FUSE_MISSING}", file=sys.stderr)
    elif args.plot:
        # Stock and fused, iterations interleaved; falls back to one run if fuse() refuses.
        try:
            stock, fused = profile_stock_and_fused(args.model, shape, **common)
            result, other = (fused, stock) if args.fused else (stock, fused)
        except RuntimeError as exc:
            if args.fused or "fuse" not in str(exc):
                print(f"regnet-ext profile: {_option_error(exc, args)}", file=sys.stderr)
                return 2
            print(f"regnet-ext profile: profiling stock only ({_option_error(exc, args)})",
                  file=sys.stderr)
        except (ValueError, ImportError) as exc:
            print(f"regnet-ext profile: {_option_error(exc, args)}", file=sys.stderr)
            return 2
    if result is None:
        try:
            result = profile(args.model, shape, fused=args.fused, schedule=args.schedule, **common)
        except (ValueError, RuntimeError, ImportError) as exc:
            print(f"regnet-ext profile: {_option_error(exc, args)}", file=sys.stderr)
            return 2
    if args.plot:
        runs = [r for r in (result, other) if r is not None]
        plot_profiles(sorted(runs, key=lambda r: r.meta["fused"]), args.plot)
    # The requested run is the document; the comparison run rides along under "compared_with".
    doc = result.to_json()
    doc["malloc_tuned"] = malloc_tuned
    if other is not None:
        doc["compared_with"] = other.to_json()
    if args.json == "-":
        print(json.dumps(doc, indent=1))
        return 0
    print(result.table())
    if other is not None:
        print()
        print(other.table())
        stock, fused = (other, result) if args.fused else (result, other)
        print("stock / fused time per stage: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in stage_speedups(stock, fused).items()))
    if args.json:
        with replaced_whole(args.json) as tmp, open(tmp, "w") as f:  # no truncated JSON on Ctrl-C
            json.dump(doc, f, indent=1)
        print(f"JSON written to {args.json}")
    if args.plot:
        print(f"plot written to {args.plot}")
    return 0


def _option_error(exc, args):
    """The profiler's message with the option in place of its parameter (``name`` of a standard
    model and ``input_shape`` are set by --model and --batch/--resolution)."""
    message = option_error(exc, args, renames={"name": "model"})
    prefix = "input_shape: "
    if message.startswith(prefix):
        message = "--batch/--resolution: " + message[len(prefix):]
    return message

