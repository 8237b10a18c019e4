"""Compare two result files of the same benchmark script: which rows got slower or faster.

    python benchmarks/compare.py OLD.json NEW.json [--threshold 0.05]

Reads the JSON that bench_kernels.py ("benchmark": "kernels"), bench_models.py ("bench_models")
and bench_fuse.py ("bench_fuse") write, matches rows by their identity (kernels: op, mode and
label, which carries the dtype and stock layout; models: model, variant, batch x resolution and
inference/training; fuse: model, variant, batch x resolution and mode), and prints per row the old
and new time (kernels: our median ms) or throughput (images/s), the change in speed, the old and
new ratio to the script's baseline, and a flag where the speed moved by more than the threshold.
Then it lists the rows found in only one file, and warns first when the two machine records
differ (CPU, threads, torch version, device, GPU) or the runs used another dtype.

One run against another is noisy: see benchmarks/README.md on reading the rounds. Exit status 0
whatever the timings say; 2 when an input is missing or unreadable, not a result of a known
benchmark, or the two files come from different benchmarks. Standard library only.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

MACHINE_FIELDS = ("cpu", "logical_cpus", "threads", "torch", "device", "gpu")


class InvalidInput(Exception):
    """An input this script cannot compare; the message says which file and why."""


@dataclass(frozen=True)
class Entry:
    """One row of a result file, reduced to what is compared."""
    key: tuple
    value: float = None        # time or throughput; None when the row failed
    ratio: float = None        # to the script's baseline, where the row has one
    error: str = None


@dataclass(frozen=True)
class Kind:
    """How to read one benchmark's JSON."""
    script: str
    metric: str                # what `value` is, for the table header
    higher_is_better: bool
    ratio_name: str            # what `ratio` is, for the table header
    entries: object            # doc -> [Entry]
    machine: object            # doc -> {field: value}


# ---- reading each benchmark's rows --------------------------------------------------------------

def kernel_entries(doc):
    entries = []
    for r in doc["rows"]:
        key = (r["op"], r["mode"], r["label"])
        if "error" in r:
            entries.append(Entry(key, error=r["error"]))
        else:
            entries.append(Entry(key, r["median_ms"]["ours"], r["speedup"].get("vs_eager")))
    return entries


def model_entries(doc):
    entries = []
    for group in doc["groups"]:
        for label, model in group["models"].items():
            shape = f"b{doc['batch']}x{model['resolution']}"
            for variant, v in model["variants"].items():
                if not v.get("available"):
                    entries.append(Entry((label, variant, shape, "infer"),
                                         error=f"unavailable: {v.get('reason')}"))
                    continue
                for phase in ("infer", "train"):
                    if f"{phase}_images_per_s" in v:
                        entries.append(Entry((label, variant, shape, phase), v[f"{phase}_images_per_s"],
                                             v.get(f"{phase}_speedup")))
    return entries


def fuse_entries(doc):
    fused_vs_eager = {(r["model"], r["batch"], r["resolution"], r["mode"]): r["ratio"]
                      for r in doc["ratios"] if r["fused_vs"] == "eager"}
    entries = []
    for r in doc["results"]:
        where = (r["model"], r["batch"], r["resolution"], r["mode"])
        ratio = fused_vs_eager.get(where) if r["variant"] == "fused" else None
        entries.append(Entry((r["model"], r["variant"], f"b{r['batch']}x{r['resolution']}", r["mode"]),
                             r["images_per_s"], ratio))
    return entries


def kernels_machine(doc):
    """The machine record; records from before --device were CPU runs. (The dtype is part of
    every kernel row's label.)"""
    return {"device": "cpu", **{k: doc["machine"][k] for k in MACHINE_FIELDS if k in doc["machine"]}}


def models_machine(doc):
    """The machine record and the run's dtype (float32 before --dtype existed)."""
    return {**kernels_machine(doc), "dtype": doc.get("dtype", "float32")}


def fuse_machine(doc):
    """bench_fuse keeps its machine fields at the top level and always runs on the CPU."""
    return {"device": "cpu", **{k: doc[k] for k in ("cpu", "threads", "torch", "dtype") if k in doc}}


KINDS = {
    "kernels": Kind("bench_kernels.py", "ours ms", False, "x eager", kernel_entries, kernels_machine),
    "bench_models": Kind("bench_models.py", "images/s", True, "x ref", model_entries, models_machine),
    "bench_fuse": Kind("bench_fuse.py", "images/s", True, "fused/eager", fuse_entries, fuse_machine),
}


# ---- loading and checking the inputs --------------------------------------------------------

def load(path):
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("benchmark") not in KINDS:
        found = doc.get("benchmark") if isinstance(doc, dict) else None
        raise InvalidInput(f"{path}: not a result this script knows (\"benchmark\": {found!r}; "
                           f"expected one of {', '.join(KINDS)})")
    return doc


def read_entries(kind, doc, path):
    try:
        entries = kind.entries(doc)
        machine = kind.machine(doc)
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{path}: a {kind.script} result without the expected fields "
                           f"({type(exc).__name__}: {exc})") from exc
    return {e.key: e for e in entries}, machine


# ---- comparing --------------------------------------------------------------------------------

def speed_change(kind, old, new):
    """new speed / old speed - 1: positive is faster, for times and throughputs alike."""
    return new / old - 1.0 if kind.higher_is_better else old / new - 1.0


def machine_differences(old, new):
    return [f"{k} {old.get(k, '-')} -> {new.get(k, '-')}" for k in dict.fromkeys([*old, *new])
            if old.get(k) != new.get(k)]


def format_table(headers, rows):
    """Fixed-width columns, the first left-aligned (as common.format_table, without torch)."""
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def compare_rows(kind, old, new, threshold):
    """(table rows, slower keys, faster keys, keys with an error) over the rows in both files."""
    table, slower, faster, failed = [], [], [], []
    for key in (k for k in old if k in new):
        a, b = old[key], new[key]
        if a.error or b.error:
            failed.append(key)
            table.append([" ".join(map(str, key)), "error" if a.error else _number(a.value),
                          "error" if b.error else _number(b.value), "-", _number(a.ratio, 2),
                          _number(b.ratio, 2), "error"])
            continue
        change = speed_change(kind, a.value, b.value)
        flag = ""
        if change < -threshold:
            flag = "SLOWER"
            slower.append(key)
        elif change > threshold:
            flag = "faster"
            faster.append(key)
        table.append([" ".join(map(str, key)), _number(a.value), _number(b.value), f"{change:+.1%}",
                      _number(a.ratio, 2), _number(b.ratio, 2), flag])
    return table, slower, faster, failed


def report(kind, paths, old_doc, new_doc, threshold):
    (old, old_machine), (new, new_machine) = (read_entries(kind, d, p) for d, p in zip((old_doc, new_doc), paths))
    print(f"{kind.script}: {paths[0]} -> {paths[1]}")
    differences = machine_differences(old_machine, new_machine)
    if differences:
        print("warning: the runs differ in " + "; ".join(differences) + " - changes may come from that")
    table, slower, faster, failed = compare_rows(kind, old, new, threshold)
    if table:
        print(f"speed = new speed / old speed - 1 (+ is faster); flagged beyond {threshold:.0%}")
        print(format_table(["row", f"old {kind.metric}", f"new {kind.metric}", "speed",
                            f"old {kind.ratio_name}", f"new {kind.ratio_name}", "flag"], table))
    print(f"\n{len(table)} rows in both files: {len(slower)} slower and {len(faster)} faster by more "
          f"than {threshold:.0%}" + (f", {len(failed)} with an error" if failed else ""))
    for name, path, mine, other in (("OLD", paths[0], old, new), ("NEW", paths[1], new, old)):
        only = [k for k in mine if k not in other]
        if only:
            print(f"only in {name} ({path}): {len(only)} rows")
            for key in only:
                print("  " + " ".join(map(str, key)))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="the earlier result (.json)")
    p.add_argument("new", help="the later result (.json), from the same benchmark script")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="flag rows whose speed changed by more than this fraction (default 0.05)")
    args = p.parse_args(argv)
    if args.threshold < 0:
        p.error("--threshold must be >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    paths = (args.old, args.new)
    try:
        old_doc, new_doc = load(args.old), load(args.new)
        if old_doc["benchmark"] != new_doc["benchmark"]:
            raise InvalidInput(f"the files come from different benchmarks ({old_doc['benchmark']!r} "
                               f"and {new_doc['benchmark']!r}): compare results of one script")
        report(KINDS[old_doc["benchmark"]], paths, old_doc, new_doc, args.threshold)
    except InvalidInput as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
