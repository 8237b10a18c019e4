"""`regnet-ext models`: the standard RegNets with their stages and analytic complexity."""
import json
import sys

from ._checks import option_error

HELP = ("List the standard RegNetX/RegNetY models: stage depths, widths, group widths, flops "
        "(multiply-adds), params and activations (pycls conventions, computed analytically).")

COLUMNS = ("name", "depths", "widths", "group_widths", "flops", "params", "acts")


def add_arguments(parser):
    parser.add_argument("--name", nargs="+", metavar="NAME",
                        help="only these models (any spelling: RegNetY-400MF, regnet_y_400mf, "
                             "regnety_004); default: all 24")
    parser.add_argument("--rounding", choices=("pycls", "torchvision"), default="pycls",
                        help="generator rounding: pycls (the paper's models, default) or "
                             "torchvision (the architectures torchvision's weights fit)")
    parser.add_argument("--resolution", type=int, default=224, metavar="PIXELS",
                        help="square input size for flops and activations (default 224)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of objects with keys " + ", ".join(COLUMNS))


def model_rows(names=None, rounding="pycls", resolution=224):
    """One dict per model with the keys in COLUMNS."""
    from ..models import STANDARD_MODELS, canonical_name, complexity, regnet_spec

    names = [canonical_name(n) for n in names] if names else list(STANDARD_MODELS)
    rows = []
    for name in names:
        spec = regnet_spec(name, rounding=rounding)
        cx = complexity(spec, resolution)
        rows.append(dict(name=name, depths=list(spec.depths), widths=list(spec.widths),
                         group_widths=list(spec.group_widths), flops=cx.flops, params=cx.params,
                         acts=cx.acts))
    return rows


def _si(value):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def format_table(rows, resolution):
    header = ("model", "depths", "widths", "group widths", f"flops@{resolution}", "params",
              "acts")
    lines = [[r["name"], " ".join(map(str, r["depths"])), " ".join(map(str, r["widths"])),
              " ".join(map(str, r["group_widths"])), _si(r["flops"]), _si(r["params"]),
              _si(r["acts"])] for r in rows]
    sizes = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    numeric = {4, 5, 6}

    def fmt(cells):
        return "  ".join(c.rjust(n) if i in numeric else c.ljust(n)
                         for i, (c, n) in enumerate(zip(cells, sizes))).rstrip()

    out = [fmt(header), fmt(["-" * n for n in sizes])] + [fmt(line) for line in lines]
    out.append("flops are multiply-adds; acts are output elements of every conv and the "
               "classifier (pycls conventions).")
    return "\n".join(out)


def run(args):
    # Argument errors exit with 2, as argparse's own (SystemExit with a message exits with 1).
    if args.resolution < 1:
        print(f"regnet-ext models: --resolution must be >= 1, got {args.resolution}", file=sys.stderr)
        return 2
    try:
        rows = model_rows(args.name, args.rounding, args.resolution)
    except ValueError as exc:
        print(f"regnet-ext models: {option_error(exc, args)}", file=sys.stderr)
        return 2
    if args.json:  # one model per line: readable, and still one JSON document
        print("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]")
    else:
        print(format_table(rows, args.resolution))
    return 0
