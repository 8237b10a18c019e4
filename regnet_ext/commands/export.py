"""`regnet-ext export`: a fused RegNet as an AOTInductor package, checked against the stock model."""
import copy
import os
import sys
import time

from ._checks import FUSE_MISSING, MODEL_BY_NAME_HELP, first_below_one, fuse_available, option_error

HELP = ("Export a RegNet (fused by default) for inference without Python's model code: torch.export "
        "(batches 1 to --max-batch), then an AOTInductor package (.pt2), loaded back and compared "
        "with the stock model. Serve it with regnet_ext.deploy.load_package, which checks its input.")

# float32: the package's output against the stock model's, relative to the largest logit: fused
# and stock RegNets agree to about 1e-6 (the demo's check); anything near this bound is a bug.
TOLERANCE = 1e-4


def add_arguments(parser):
    parser.add_argument("--model", default=None,
                        help=MODEL_BY_NAME_HELP.replace("(default RegNetY-400MF)", "(default: the model a "
                                                        "`regnet-ext train` checkpoint in --weights records, "
                                                        "else RegNetY-400MF)"))
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="a state_dict saved with torch.save (the model's own key layout) or a "
                             "`regnet-ext train` checkpoint, whose model and resolution are the defaults "
                             "of --model and --resolution (checkpoints from before 2026-12-07 record "
                             "neither); the class count is read from it (default: random weights)")
    parser.add_argument("--out", required=True, metavar="PATH.pt2", help="the package to write")
    parser.add_argument("--resolution", type=int, default=None,
                        help="input side the package is compiled for (default: the resolution a "
                             "`regnet-ext train` checkpoint in --weights records, else 224)")
    parser.add_argument("--max-batch", type=int, default=256,
                        help="largest batch the package is compiled for: it takes 1 to this many images "
                             "(1: a static batch of 1) (default 256)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype of the weights, input and output (default float32; bfloat16 for CPUs "
                             "with AVX512-BF16 or AMX)")
    parser.add_argument("--no-fuse", action="store_true", help="export the stock model (no regnet_ext operators)")


def _check(args):
    error = first_below_one(args, ("resolution", "max_batch"))
    if error:
        return error
    from ..deploy import check_package_path

    try:
        check_package_path(args.out, "--out")
    except ValueError as exc:
        return str(exc)
    if args.weights is not None and not os.path.isfile(args.weights):
        return f"--weights: {args.weights!r} is not a file"
    if not args.no_fuse and not fuse_available():
        return f"{FUSE_MISSING}; export the stock model with --no-fuse"
    return None


def load_state(path):
    """(state_dict, record) from ``path``: a state_dict saved on its own (record None), or a
    `regnet-ext train` checkpoint's model and what it records of it (settings["model"]: the
    AnyNetSpec as a dict and the resolution; None in older checkpoints)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--weights: cannot read {path!r} as a torch.save file of tensors ({first})") from exc
    record = None
    if isinstance(state, dict) and "format_version" in state and "model" in state:
        record = (state.get("settings") or {}).get("model")
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--weights: {path!r} holds no state_dict (a dict of tensors) nor a "
                         f"`regnet-ext train` checkpoint")
    return state, record


def classes_in(state):
    """Rows of the state's classifier weight (the last 2-D `...fc.weight`), or None."""
    return next((v.shape[0] for k, v in reversed(state.items()) if k.endswith("fc.weight") and v.dim() == 2),
                None)


def _say(message):
    print(message, file=sys.stderr, flush=True)


def run(args):
    error = _check(args)
    if error:
        print(f"regnet-ext export: {error}", file=sys.stderr)
        return 2
    import torch

    from ..profiling.profiler import build_model

    try:
        state, record = load_state(args.weights) if args.weights else (None, None)
        classes = (classes_in(state) if state else None) or 1000
        if args.model is None and record is not None:
            from ..models import AnyNet, AnyNetSpec

            stock = AnyNet(AnyNetSpec(**record["spec"]))
            args.model = stock.spec.name or "the checkpoint's model"
        else:
            args.model = args.model or "RegNetY-400MF"
            stock = build_model(args.model, num_classes=classes)
        # The checkpoint's resolution is the default with --model given too (the weights were
        # trained at it; a 224 package would refuse the images they are served with).
        args.resolution = args.resolution or (record or {}).get("resolution") or 224
        if state is not None:
            try:
                stock.load_state_dict(state)
            except RuntimeError as exc:  # torch lists every key: keep the start
                detail = " ".join(str(exc).split())
                detail = detail if len(detail) <= 400 else detail[:400] + " ..."
                raise ValueError(f"--weights: does not fit --model {args.model}: {detail}") from exc
    except (ValueError, ImportError, RuntimeError) as exc:
        # build_model's messages start "name: " or "model: "; timm's name nothing: all --model's.
        message = option_error(exc, args, {"name": "model"})
        print(f"regnet-ext export: {message if message.startswith('--') else '--model: ' + message}",
              file=sys.stderr)
        return 2
    stock = stock.eval().to(memory_format=torch.channels_last)
    model = copy.deepcopy(stock)
    if not args.no_fuse:
        from ..nn import fuse

        model, report = fuse(model, report=True)
        # The whole report when something stayed stock, else its first line.
        _say(str(report) if report.left_stock or report.notes else str(report).splitlines()[0])
    return _export(args, stock, model)


def _images(batch, resolution, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, resolution, resolution, generator=g).contiguous(memory_format=torch.channels_last)


def _reference_check(stock, dtype):
    """check(x, y) -> (error, allowed) of the package's output y for the float32 images x, both
    relative to the largest reference output. float32: against the stock model, within TOLERANCE.
    bfloat16: against the stock model in float64, within the project's rule for 16-bit results
    (regnet_ext.tolerances.allowed_error: ERROR_MULTIPLE x the stock model's own error in
    bfloat16, plus a few ulps)."""
    import torch

    from ..tolerances import allowed_error, max_error

    if dtype == torch.float32:
        def check(x, y):
            expected = stock(x)
            scale = expected.abs().max().item()
            return max_error(y, expected) / scale, TOLERANCE
        return check
    exact, plain = copy.deepcopy(stock).double(), copy.deepcopy(stock).to(dtype)

    def check(x, y):
        expected = exact(x.double())
        scale = expected.abs().max().item()
        return max_error(y, expected) / scale, allowed_error(expected, plain(x.to(dtype)), dtype) / scale
    return check


def _export(args, stock, model):
    import torch

    from ..deploy import aoti_package, load_package

    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    _say(f"exporting {args.model} ({args.resolution}x{args.resolution}, batch 1..{args.max_batch}, {args.dtype}) "
         f"and compiling the AOTInductor package (tens of seconds) ...")
    static = args.max_batch == 1  # a batch dimension of 1 cannot be dynamic (export specialises it)
    example = _images(1 if static else 2, args.resolution, 0).to(dtype)
    aoti_package(model.to(dtype), example, args.out, max_batch=None if static else args.max_batch)
    _say(f"wrote {args.out} in {time.perf_counter() - start:.0f} s; checking it against the stock model")
    runner, check = load_package(args.out), _reference_check(stock, dtype)
    batches = sorted({1, min(3, args.max_batch)})
    with torch.no_grad():
        # (error, allowed, batch) per batch size, the largest error first
        results = sorted(((*check(x, runner(x.to(dtype))), n) for n in batches
                          for x in [_images(n, args.resolution, n)]), reverse=True)
    failed = [r for r in results if not r[0] <= r[1]]
    if failed:
        error, allowed, n = failed[0]
        print(f"regnet-ext export: the package's output differs from the stock model's by {error:.2e} at "
              f"batch {n} (relative to the largest output; at most {allowed:.1e} expected): {args.out} is "
              f"not fit to serve", file=sys.stderr)
        return 1
    versus = "the stock model" if dtype == torch.float32 else "the stock model in float64"
    error, allowed, _ = results[0]
    print(f"{args.out}: max relative difference to {versus} {error:.2e}, at most {allowed:.1e} allowed "
          f"(batch {' and '.join(map(str, batches))})")
    print(f"serve it with:  from regnet_ext.deploy import load_package\n"
          f"                model = load_package({args.out!r})  # checks every batch: {runner.expected()}\n"
          f"                logits = model(images)  # under torch.no_grad()")
    return 0
