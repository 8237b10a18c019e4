"""Pieces every benchmark script shares: interleaved A/B(/C) timing with medians (on the CPU or a
CUDA GPU), the --device / dtype checks, a record of the machine and versions, and the JSON / PNG /
table writers.

Timing rule (DESIGN.md §6): candidates are timed in the same run, interleaved round by round (the
order rotates every round so none always runs first), and each is summarised by the median of its
rounds; reports give ratios, never absolute thresholds.
"""
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from regnet_ext.allocator import counting_faults, minor_faults  # noqa: F401  (shared)
from regnet_ext.profiling.timing import calls_per_sample, time_interleaved  # noqa: F401  (shared)

DEVICES = ("cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- options --------------------------------------------------------------------------------

def batch_resolution(text):
    """argparse type of a BATCHxRESOLUTION option value: '8x224' -> (8, 224)."""
    import argparse

    try:
        batch, resolution = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxRESOLUTION such as 8x224, got {text!r}") from None
    if batch < 1 or resolution < 1:
        raise argparse.ArgumentTypeError(f"BATCHxRESOLUTION needs both >= 1, got {text!r}")
    return batch, resolution


def _check_values(parser, args, names, is_bad, expected):
    for name in names:
        value = getattr(args, name)
        values = value if isinstance(value, list) else [value]
        if any(v is not None and is_bad(v) for v in values):
            parser.error(f"--{name.replace('_', '-')}: expected values {expected}, got "
                         f"{' '.join(map(str, values))}")


def check_positive(parser, args, names):
    """Int/float options in ``names`` (attribute names) given as 0 or less are a usage error
    (exit 2), checked before any default replaces them: `args.x or default` would silently run
    the default for 0, and a batch of 0 ran every row into an error."""
    _check_values(parser, args, names, lambda v: v <= 0, "> 0")


def check_non_negative(parser, args, names):
    """check_positive for options where 0 is a value (untimed warm-up calls)."""
    _check_values(parser, args, names, lambda v: v < 0, ">= 0")


def check_out(parser, stem):
    """An --out stem whose JSON could not be written is a usage error (exit 2) now, not a
    traceback once the timing is done (missing folders are made when writing)."""
    from regnet_ext._paths import check_output_path_in_new_folders

    try:
        check_output_path_in_new_folders("--out", output_file(stem, ".json"))
    except ValueError as exc:
        parser.error(str(exc))


def check_model_names(parser, option, names):
    """Unknown RegNet names are a usage error (exit 2, one line) before any work, not a
    traceback once the run reaches them."""
    from regnet_ext.models import canonical_name

    for name in names or ():
        try:
            canonical_name(name)
        except ValueError as exc:
            parser.error(f"{option}: {str(exc).removeprefix('name: ')}")


# ---- device and dtype options ---------------------------------------------------------------

def checked_device(parser, name):
    """torch.device for --device; asking for CUDA without one is a usage error (exit 2, one line
    on stderr), not a traceback from the first tensor moved to the GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: no CUDA GPU is available (torch.cuda.is_available() is False; "
                     f"torch {torch.__version__}, built with CUDA {torch.version.cuda or 'none'})")
    return torch.device(name)


def check_dtypes(parser, option, names, device):
    """float16 only on CUDA: oneDNN's CPU convolutions have no float16 path without AVX512-FP16."""
    if "float16" in names and device.type != "cuda":
        parser.error(f"{option} float16 needs --device cuda (the CPU convolutions have no float16 "
                     f"path on most CPUs); use bfloat16 on the CPU")


# ---- timing on a device ---------------------------------------------------------------------

def synchronised(fn, device):
    """fn itself on the CPU; on a GPU, fn followed by a synchronisation, so that a call's time
    includes the kernels it queued and the next call starts on an idle device."""
    if device.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return call


def _repeated(fn, calls):
    def sample():
        for _ in range(calls):
            fn()
    return sample


class CompetingLoad:
    """The CPU time other processes (and the hypervisor, as steal) took from the machine while
    candidates were being timed. Interleaving keeps A and B under the same conditions, but a build
    or another benchmark on the same cores still skews both: a kernel benchmark run beside a
    compile (2-core VM, 2026-12-07) timed rows whose every round was a whole number of 4 ms
    scheduler ticks, ours and eager alike. Linux only (/proc/stat); elsewhere nothing is counted."""

    def __init__(self):
        self.timed_s = self.other_cpu_s = self.steal_cpu_s = 0.0

    @staticmethod
    def _counters():
        """(wall s, busy CPU s of the machine, steal CPU s, this process's CPU s), or None."""
        try:
            with open("/proc/stat") as f:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
        except (OSError, ValueError):
            return None
        hz, own = os.sysconf("SC_CLK_TCK"), os.times()
        return (time.perf_counter(), (user + nice + system + irq + softirq) / hz, steal / hz,
                own.user + own.system)

    @contextlib.contextmanager
    def counting(self):
        start = self._counters()
        try:
            yield
        finally:
            end = self._counters()
            if start is not None and end is not None:
                self.timed_s += end[0] - start[0]
                self.other_cpu_s += max(0.0, (end[1] - start[1]) - (end[3] - start[3]))
                self.steal_cpu_s += end[2] - start[2]

    def record(self):
        """JSON-ready: seconds timed, CPU seconds others and steal took, and their shares of the
        machine's CPU time over those seconds."""
        capacity = max(self.timed_s * (os.cpu_count() or 1), 1e-9)
        return {"timed_s": round(self.timed_s, 3), "other_processes_cpu_s": round(self.other_cpu_s, 3),
                "steal_cpu_s": round(self.steal_cpu_s, 3), "other_processes_share": self.other_cpu_s / capacity,
                "steal_share": self.steal_cpu_s / capacity}

    def warning(self, threshold=0.1):
        """A line to print where others took more than `threshold` of the CPU time, else None."""
        r = self.record()
        taken = r["other_processes_share"] + r["steal_share"]
        if taken <= threshold:
            return None
        return (f"warning: while candidates were timed, other processes took {r['other_processes_share']:.0%} "
                f"of the CPU time and the hypervisor {r['steal_share']:.0%} (steal): these timings are "
                f"skewed; rerun on an idle machine")


COMPETING_LOAD = CompetingLoad()  # every time_interleaved_on call of this process counts into it


def time_interleaved_on(device, candidates, *, rounds, warmup, target_s):
    """time_interleaved on `device`, same result format. CPU: time_interleaved itself. CUDA: one
    sample is `calls` back-to-back calls then one synchronize (launches overlap the GPU's work as
    in a real network, and the sample ends only when that work is done); per-call time = sample
    time / calls. The time counts into COMPETING_LOAD."""
    with COMPETING_LOAD.counting():
        return _time_interleaved_on(device, candidates, rounds=rounds, warmup=warmup, target_s=target_s)


def _time_interleaved_on(device, candidates, *, rounds, warmup, target_s):
    if device.type != "cuda":
        return time_interleaved(candidates, rounds=rounds, warmup=warmup, target_s=target_s)
    for _ in range(warmup):
        for fn in candidates.values():
            synchronised(fn, device)()
    calls = {name: calls_per_sample(synchronised(fn, device), target_s) for name, fn in candidates.items()}
    samples = {name: synchronised(_repeated(fn, calls[name]), device) for name, fn in candidates.items()}
    # target_s=0: time_interleaved then times one call of each sample function per round.
    timed = time_interleaved(samples, rounds=rounds, warmup=0, target_s=0)
    return {name: {"median_s": t["median_s"] / calls[name], "min_s": t["min_s"] / calls[name],
                   "rounds_s": [s / calls[name] for s in t["rounds_s"]], "calls": calls[name]}
            for name, t in timed.items()}


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_record(device):
    """What a result's device was: {"device": "cpu"}, or on CUDA also the GPU's name, compute
    capability and the CUDA version torch was built with."""
    if device.type != "cuda":
        return {"device": "cpu"}
    major, minor = torch.cuda.get_device_capability(device)
    return {"device": "cuda", "gpu": torch.cuda.get_device_name(device),
            "gpu_capability": f"{major}.{minor}", "cuda": torch.version.cuda}


def hardware_name(machine):
    """The GPU's name for a CUDA result, else the CPU's (plot titles)."""
    return machine.get("gpu") or machine["cpu"]


def machine_record(**extra):
    """CPU, thread count, library versions and date: stored with every result (pass
    **device_record(device) to record the device too)."""
    record = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import torchvision

        record["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        from regnet_ext._extension import build_config

        record["regnet_ext_build"] = build_config()
    except ImportError:
        pass
    record["regnet_ext_cpu_conv_autotune"] = cpu_conv_autotune_enabled()
    if COMPETING_LOAD.timed_s > 0:
        record["competing_load"] = COMPETING_LOAD.record()
    record.update(extra)
    return record


def print_competing_load_warning():
    """COMPETING_LOAD's warning, to stderr, where other processes took a share worth one."""
    warning = COMPETING_LOAD.warning()
    if warning:
        print(warning, file=sys.stderr, flush=True)


def cpu_conv_autotune_enabled():
    """Whether our CPU conv autotuner is on in this process (None without the extension)."""
    try:
        from regnet_ext.ops import cpu_conv_autotune_enabled as enabled
    except ImportError:
        return None
    return enabled()


def cpu_conv_autotune_choices():
    """The autotuner's decisions so far, JSON-ready (dtype as a string); [] without the extension."""
    try:
        from regnet_ext.ops import cpu_conv_autotune_records
    except ImportError:
        return []
    return [{**r, "dtype": str(r["dtype"]).replace("torch.", "")} for r in cpu_conv_autotune_records()]


def print_autotune_summary(choices):
    """One line: how many conv shapes the CPU autotuner timed and what it kept."""
    if not choices:
        return
    kept = {}
    for c in choices:
        kept[c["chosen"]] = kept.get(c["chosen"], 0) + 1
    print(f"cpu conv autotuner: {len(choices)} shapes timed, kept " +
          ", ".join(f"{k} {n}" for k, n in sorted(kept.items())))


def output_file(stem, suffix):
    """The file ``suffix`` (".json", ".png") of an --out stem: the stem with the suffix appended.
    Path.with_suffix cut a stem at its last dot: --out results/kernels_y4.0gf wrote kernels_y4.json
    and kernels_y4.png. A stem given as a .json or .png file name has that replaced."""
    stem = Path(stem)
    if stem.suffix.lower() in (".json", ".png"):
        stem = stem.with_suffix("")
    return stem.with_name(stem.name + suffix)


def write_json(path, doc):
    """Writes through a temporary file, so that an interruption never leaves half a JSON."""
    from regnet_ext._paths import replaced_whole

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def sgd_implementations(optimizers):
    """Which torch.optim.SGD implementations stepped the training rows: "fused" (PyTorch's fused
    kernel) and/or "default"; recorded with the results, since the step is part of the time."""
    return sorted({"fused" if opt.defaults.get("fused") else "default" for opt in optimizers})


def format_table(headers, rows):
    """A fixed-width text table; cells are converted with str()."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_ratio_png(path, panels, *, title, xlabel="speed-up (x, higher is better)"):
    """Horizontal bar charts of ratios, one panel per entry of `panels`:
    panel title -> {"labels": [...], "series": {name: [ratio or None, ...]}}.
    A dashed line marks 1x (parity)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("writing the PNG needs matplotlib (pip install matplotlib)") from exc
    panels = {k: v for k, v in panels.items() if v["labels"]}
    if not panels:
        return None
    heights = [max(2.0, 0.22 * len(p["labels"]) + 1.2) for p in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (panel_title, panel) in zip(axes[:, 0], panels.items()):
        labels, series = panel["labels"], panel["series"]
        bar = 0.8 / max(1, len(series))
        for k, (name, values) in enumerate(series.items()):
            ys = [i + (k - (len(series) - 1) / 2) * bar for i in range(len(labels))]
            ax.barh(ys, [v if v is not None else 0.0 for v in values], height=bar, label=name)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(panel_title, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel(xlabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
