"""`regnet-ext space`: design spaces - list, sample, sweep, analyze, fit."""
import json
import sys

from .._paths import check_output_path
from ._checks import sigterm_unwinds

HELP = ("Design spaces (AnyNetX A-E, RegNetX/Y): sample under complexity budgets, sweep "
        "(short training, resumable), analyze (EDFs, bootstrap, trends), fit widths.")

_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}
_VALUE_SETS = ("bottleneck_ratios", "group_widths")  # the other tuple fields are (low, high)


def _number(text):
    t = text.strip().lower()
    scale = _SUFFIX.get(t[-1:], None)
    value = float(t[:-1]) * scale if scale else float(t)
    return int(value) if value.is_integer() else value


def _plain_value(text):
    """An int or float when the text is one, else the text (no k/M/G suffixes: "16G" stays)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parsed(option, expected, text, parse):
    """parse(text), or a ValueError that names the option and what it expects."""
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{option}: expected {expected}, got {text!r}") from None


def _numbers(text):
    """"24,56,152" -> [24, 56, 152] (blank items skipped)."""
    return [_number(v) for v in text.split(",") if v.strip()]


def _low_high(text):
    lo, sep, hi = text.partition(":")
    if not sep:
        raise ValueError("no ':'")
    return (_number(lo) if lo.strip() else None, _number(hi) if hi.strip() else None)


def _range(text):
    lo, _, hi = text.partition(":")
    return _number(lo), _number(hi or lo)


def _band(option, text):
    """"360M:400M" -> (360e6, 400e6); either side may be empty (no bound)."""
    if text is None:
        return None
    return _parsed(option, "LO:HI with numbers and an optional k, M or G suffix", text, _low_high)


def _space_changes(assignments, base):
    """--set key=value pairs -> replace() arguments, typed after the base space's fields."""
    changes = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        if not sep or not hasattr(base, key) or key in ("name", "family"):
            raise ValueError(f"--set: expected FIELD=VALUE with FIELD one of "
                             f"{[k for k in base.describe() if k not in ('name', 'family')]}, "
                             f"got {item!r}")
        current = getattr(base, key)
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {key}: expected true or false, got {value!r}")
            changes[key] = value.lower() in ("true", "1")
        elif isinstance(current, tuple) and key in _VALUE_SETS:
            changes[key] = tuple(_parsed(f"--set {key}", "comma-separated numbers (e.g. 1,2,4)",
                                         value, _numbers))
        elif isinstance(current, tuple):
            changes[key] = _parsed(f"--set {key}", "LO:HI or one number (e.g. 12:20)", value,
                                   _range)
        else:
            changes[key] = _parsed(f"--set {key}", "a number", value, _number)
    return changes


def _as_built(built, sampled):
    """"[8, 384*]": the built values, * marking each one that differs from the sampled value."""
    if sampled is None:
        return str(list(built))
    return "[" + ", ".join(f"{b}*" if b != s else str(b) for b, s in zip(built, sampled)) + "]"


def _print_json(doc):
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _fail(message):
    print(f"regnet-ext space: {message}", file=sys.stderr)
    return 2


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="the built-in spaces and their settings")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("sample", help="draw distinct configurations within complexity bands",
                       description="Rejection-sample a design space. Complexity is analytic and "
                                   "measured at --resolution with 1000 classes (the paper's regime).")
    p.add_argument("space", help="anynetx_a..anynetx_e, regnetx, regnety")
    p.add_argument("-n", "--n", type=int, default=100, help="configurations to draw (default 100)")
    p.add_argument("--flops", default=None, metavar="LO:HI",
                   help="multiply-add band, e.g. 360M:400M (suffixes k, M, G)")
    p.add_argument("--params", default=None, metavar="LO:HI", help="parameter band, e.g. :6M")
    p.add_argument("--acts", default=None, metavar="LO:HI", help="activation band")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resolution", type=int, default=224, help="input side for complexity (224)")
    p.add_argument("--max-attempts", type=int, default=None, help="give up after this many draws")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="a variant of the space: depth=12:20, wm=2.3:2.7, bottleneck_ratios=1, "
                        "group_width=16:16, se_ratio=0.25, increasing_widths=true (repeatable)")
    p.add_argument("--name", default=None, help="name of the variant (default SPACE_custom)")
    p.add_argument("--out", default=None, help="write the samples as JSONL")
    p.add_argument("--json", action="store_true", help="print the samples as JSON")

    p = sub.add_parser("sweep", help="train every sampled model briefly; resumable JSONL results",
                       description="Train each sample of SAMPLES for a short schedule and append "
                                   "its error to --out as it finishes. Run the same command again "
                                   "to resume a sweep that was stopped.")
    p.add_argument("samples", help="JSONL written by `space sample --out`")
    p.add_argument("--out", required=True, help="results JSONL (appended; resumed if present)")
    p.add_argument("--dataset", default="digits", help="'digits' (default) or an ImageFolder path")
    p.add_argument("--resolution", type=int, default=16, help="training resolution (default 16)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per model (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=0.025,
                   help="peak learning rate (default 0.025: 0.1 at batch 128, scaled to 32)")
    p.add_argument("--weight-decay", type=float, default=5e-5, help="default 5e-5")
    p.add_argument("--seed", type=int, default=0, help="base seed (trial i uses seed + i)")
    p.add_argument("--train-subset", type=int, default=None, help="train on this many images")
    p.add_argument("--val-subset", type=int, default=None, help="evaluate on this many images")
    p.add_argument("--engine", default="local", choices=("local", "inline", "submitit"),
                   help="local processes (default), this process, or submitit (SLURM/local)")
    p.add_argument("--workers", type=int, default=None, help="local processes (default: CPUs)")
    p.add_argument("--threads-per-trial", type=int, default=1, help="torch threads per trial (1)")
    p.add_argument("--cluster", default=None,
                   help="submitit cluster: slurm, local or debug (default: submitit decides)")
    p.add_argument("--timeout-min", type=int, default=60, help="submitit job time limit (60)")
    p.add_argument("--submitit-option", action="append", metavar="KEY=VALUE",
                   help="more submitit parameters, e.g. slurm_partition=dev, gpus_per_node=1, "
                        "slurm_array_parallelism=64 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the records as JSON")

    p = sub.add_parser("analyze", help="EDFs, summaries, bootstrap intervals and trend plots",
                       description="Analyze sweep results: one population per space name.")
    p.add_argument("results", nargs="+", help="results JSONL files")
    p.add_argument("--edf", default=None, metavar="PNG",
                   help="EDF plot of every space (any format matplotlib writes, by extension; "
                        ".png added to a name without one)")
    p.add_argument("--weighted", action="store_true",
                   help="weight models so that the spaces' flop distributions match")
    p.add_argument("--bins", type=int, default=10, help="complexity bins for --weighted (10)")
    p.add_argument("--scatter", default=None, metavar="PNG",
                   help="error against each parameter (one file per space: PNG stem + "
                        "_SPACE; .png added to a name without an extension)")
    p.add_argument("--params", default=None,
                   help="comma-separated parameters for the bootstrap and scatter (default: all "
                        "that vary)")
    p.add_argument("--fraction", type=float, default=0.25, help="bootstrap sample fraction (0.25)")
    p.add_argument("--repetitions", type=int, default=10_000, help="bootstrap repetitions (10^4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("fit", help="fit the quantized linear model (w0, wa, wm) to per-block widths",
                       description="Find (w0, wa, wm) minimising e_fit = mean |ln(w_fit / w)| over "
                                   "blocks, for explicit widths or a standard model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--widths", help="comma-separated per-block widths")
    src.add_argument("--model", help="a standard model, e.g. RegNetX-400MF")
    p.add_argument("--wm-range", default="1.5:3", help="wm search range (default 1.5:3)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args):
    try:
        return {"list": _list, "sample": _sample, "sweep": _sweep, "analyze": _analyze,
                "fit": _fit}[args.action](args)
    except (ValueError, RuntimeError) as exc:
        return _fail(str(exc))


def _list(args):
    from ..design_space import SPACES

    docs = {name: space.describe() for name, space in SPACES.items()}
    if args.json:
        _print_json(docs)
        return 0
    for name, doc in docs.items():
        settings = ", ".join(f"{k}={v}" for k, v in doc.items() if k not in ("name", "family"))
        print(f"{name:10s} {doc['family']:7s} {settings}")
    return 0


def _sample(args):
    from ..design_space import get_space, sample, save_samples

    base = get_space(args.space)
    changes = _space_changes(args.set, base)
    if args.name:
        changes["name"] = args.name
    space = base.replace(**changes)  # a variant is named SPACE_custom unless --name says
    if args.resolution < 1:
        raise ValueError(f"--resolution: expected an integer >= 1, got {args.resolution}")
    check_output_path("--out", args.out)
    samples = sample(space, args.n, flops=_band("--flops", args.flops),
                     params=_band("--params", args.params), acts=_band("--acts", args.acts),
                     seed=args.seed, resolution=args.resolution,
                     max_attempts=args.max_attempts)
    if args.out:
        save_samples(samples, args.out)
    if args.json:
        _print_json([s.to_dict() for s in samples])
        return 0
    print(f"{'#':>4} {'MFLOPs':>9} {'Mparams':>8} {'Macts':>7}  "
          f"depths / widths / group widths (as built)")
    rows = []
    for i, s in enumerate(samples):
        groups = s.config.get("group_widths")
        if groups is None and "group_width" in s.config:  # RegNet: one group width for all stages
            groups = [s.config["group_width"]] * len(s.spec.group_widths)
        rows.append(f"{i:4d} {s.flops / 1e6:9.1f} {s.params / 1e6:8.2f} {s.acts / 1e6:7.2f}  "
                    f"{list(s.spec.depths)} {_as_built(s.spec.widths, s.config.get('widths'))} "
                    f"{_as_built(s.spec.group_widths, groups)}")
    print("\n".join(rows))
    if any("*" in row for row in rows):
        print("* changed from the sampled value by the group/bottleneck compatibility step "
              "(records keep both: config = sampled, spec = built)")
    if args.out:
        print(f"{len(samples)} samples of {space.name} -> {args.out}")
    return 0


def _sweep(args):
    from ..design_space import load_samples, run_sweep

    options = {"timeout_min": args.timeout_min}
    if args.cluster:
        options["cluster"] = args.cluster
    for item in args.submitit_option or []:
        key, sep, value = item.partition("=")
        if not (sep and key):
            raise ValueError(f"--submitit-option: expected KEY=VALUE, got {item!r}")
        options[key] = _plain_value(value)
    check_output_path("--out", args.out)
    # SIGTERM unwinds like Ctrl-C, so that the sweep's finally blocks shut its worker pool down
    # (killed outright, it leaks the pool's semaphores and leaves workers waiting forever).
    with sigterm_unwinds():
        records = run_sweep(load_samples(args.samples), args.out, engine=args.engine,
                            workers=args.workers, engine_options=options,
                            progress=not args.no_progress, dataset=args.dataset,
                            resolution=args.resolution, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, seed=args.seed,
                            train_subset=args.train_subset, val_subset=args.val_subset,
                            threads_per_trial=args.threads_per_trial)
    if args.json:
        _print_json(records)
        return 0
    print(f"{'trial':>5} {'space':12s} {'MFLOPs':>9} {'error %':>8} {'time s':>7}")
    for r in records:
        print(f"{r['trial']:5d} {r['space'][:12]:12s} {r['flops'] / 1e6:9.1f} "
              f"{r['top1_error']:8.2f} {r['train_time_s']:7.1f}")
    return 0


def _analyze(args):
    import os

    import numpy as np

    from ..design_space import (empirical_bootstrap, group_by_space, load_results,
                                matched_weights, missing_trials_warning, model_parameters,
                                parameter_table, settings_warning, summarize)
    from ..design_space.plots import plot_edfs, plot_error_vs_parameters, plot_path

    if not 0 < args.fraction <= 1:
        raise ValueError(f"--fraction: expected a fraction of the models in (0, 1], "
                         f"got {args.fraction:g}")
    # The files the plots go to (matplotlib adds .png to a name without an extension): checked,
    # and later reported, as written.
    edf_path = None if args.edf is None else plot_path(args.edf, "--edf")
    scatter_path = None if args.scatter is None else plot_path(args.scatter, "--scatter")
    check_output_path("--edf", edf_path)
    check_output_path("--scatter", scatter_path)
    paths = {}  # real path -> path as given, each file once
    for path in args.results:
        twin = paths.setdefault(os.path.realpath(path), path)
        if twin is not path:  # its models counted twice would narrow every interval for nothing
            print(f"regnet-ext space: warning: {path} is {twin} again; it is read once",
                  file=sys.stderr)
    paths = list(paths.values())
    loaded = {path: load_results(path) for path in paths}
    for path, found in loaded.items():
        warning = missing_trials_warning(path, found)
        if warning:
            print(f"regnet-ext space: warning: {warning}", file=sys.stderr)
    labelled = [(f"{path} ({r.get('space', '?')})", r) for path, found in loaded.items()
                for r in found]
    records = [r for _, r in labelled]
    warning = settings_warning(labelled)
    if warning:  # a warning, not an error: comparing across settings can be intended
        print(f"regnet-ext space: warning: {warning}", file=sys.stderr)
    groups = group_by_space(records)
    summary = summarize(records)
    wanted = [p.strip() for p in args.params.split(",")] if args.params else None
    doc = {"summary": summary, "bootstrap": {}, "plots": []}
    if wanted:
        known = {k for r in records for k in model_parameters(r)}
        unknown = [p for p in wanted if p not in known]
        if unknown:
            raise ValueError(f"--params: no model has {unknown}; known: {sorted(known)}")
    for space, group in groups.items():
        names, values = parameter_table(group, wanted)
        errors = np.array([r["top1_error"] for r in group])
        # Keep the parameters this population has (a RegNet has wm, an AnyNet has w1..w4) and,
        # unless asked for by name, only those that vary.
        keep = [k for k in range(len(names)) if np.isfinite(values[:, k]).any()
                and (wanted or np.nanmax(values[:, k]) > np.nanmin(values[:, k]))]
        names, values = [names[k] for k in keep], values[:, keep]
        intervals = {}
        for k, name in enumerate(names):
            ok = np.isfinite(values[:, k])
            intervals[name] = empirical_bootstrap(values[ok, k], errors[ok], fraction=args.fraction,
                                                  repetitions=args.repetitions,
                                                  seed=args.seed).to_dict()
        doc["bootstrap"][space] = intervals
        if scatter_path is not None and names:
            stem, ext = os.path.splitext(scatter_path)
            path = f"{stem}_{space}{ext}" if len(groups) > 1 else scatter_path
            doc["plots"].append(plot_error_vs_parameters(
                names, values, errors, path, title=space, fraction=args.fraction,
                repetitions=args.repetitions, seed=args.seed))
    if edf_path is not None:
        populations = {s: [r["top1_error"] for r in g] for s, g in groups.items()}
        weights = None
        if args.weighted:
            w = matched_weights([[r["flops"] for r in g] for g in groups.values()], bins=args.bins)
            weights = dict(zip(groups, w))
        doc["plots"].append(plot_edfs(
            populations, edf_path, weights=weights,
            title="error EDF" + (" (flops-matched weights)" if args.weighted else "")))
    if args.json:
        _print_json(doc)
        return 0
    print(f"{'space':14s} {'n':>4} {'diverged':>8} {'min err':>8} {'median':>8} {'mean':>8}")
    for space, s in summary.items():
        print(f"{space[:14]:14s} {s['n']:4d} {s['diverged']:8d} {s['min_error']:8.2f} "
              f"{s['median_error']:8.2f} {s['mean_error']:8.2f}")
    for space, intervals in doc["bootstrap"].items():
        print(f"\n{space}: best model's parameter, {args.fraction:g} samples x {args.repetitions} "
              f"(95% interval)")
        for name, r in intervals.items():
            print(f"  {name:14s} {r['median']:12.4g}  [{r['low']:.4g}, {r['high']:.4g}]")
    for path in doc["plots"]:
        print(f"wrote {path}")
    return 0


def _fit(args):
    from ..design_space import fit_widths

    wm_range = _band("--wm-range", args.wm_range)
    if args.model:
        from ..models.zoo import regnet_spec

        widths = regnet_spec(args.model)
    else:
        widths = _parsed("--widths", "comma-separated numbers (e.g. 24,56,152)", args.widths,
                         _numbers)
    fit = fit_widths(widths, wm_range=wm_range)
    if args.json:
        _print_json(fit.to_dict())
        return 0
    print(f"depth {fit.depth}: w0 = {fit.w0}, wa = {fit.wa:.2f}, wm = {fit.wm:.3f}, "
          f"e_fit = {fit.e_fit:.4f}")
    print(f"observed: {list(fit.widths)}")
    print(f"fitted:   {list(fit.fitted_widths)}")
    return 0
