"""Pieces every benchmark script shares: interleaved A/B(/C) timing with medians, a record of the
machine and versions, and the JSON / PNG / table writers.

Timing rule (DESIGN.md §6): candidates are timed in the same run, interleaved round by round (the
order rotates every round so none always runs first), and each is summarised by the median of its
rounds; reports give ratios, never absolute thresholds.
"""
import datetime
import json
import os
import platform
from pathlib import Path

import torch

from regnet_ext.profiling.timing import calls_per_sample, time_interleaved  # noqa: F401  (shared)


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_record(**extra):
    """CPU, thread count, library versions and date: stored with every result."""
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
    record.update(extra)
    return record


def write_json(path, doc):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


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
