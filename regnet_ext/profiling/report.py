"""What the profiler reports: the ProfileResult records, its terminal table, JSON and plots."""
import os
from dataclasses import dataclass, field

from .._paths import plot_path, replaced_whole

SCHEMA = "regnet_ext.profile/1"


@dataclass
class ProfileResult:
    """What profile() measured; ``stages`` and ``block_kinds`` are lists of plain dicts."""

    meta: dict
    stages: list
    block_kinds: list
    units: list
    total: dict
    ceiling: dict = field(default_factory=dict)

    def to_json(self):
        return {"schema": SCHEMA, **self.meta, "ceiling": self.ceiling, "total": self.total,
                "stages": self.stages, "block_kinds": self.block_kinds, "units": self.units}

    def table(self):
        """A terminal table: one row per stage, then per block kind."""
        m = self.meta
        head = (f"{m['model']}  batch {m['batch']}  {m['resolution']}px  {m['device']} "
                f"{m['dtype']}  {'fused' if m['fused'] else 'stock'} (traffic schedule "
                f"{m['schedule']})  {'forward+backward' if m['train'] else 'forward'}  "
                f"median of {m['iters']}")
        ceil = (f"ceilings: {self.ceiling['gb_per_s']:.1f} GB/s, {self.ceiling['gflops_per_s']:.1f} "
                f"GFLOP/s ({self.ceiling['source']}: {self.ceiling['name']})")
        cols = ("name", "time_ms", "share", "gflops", "gflops_per_s", "mbytes", "gb_per_s",
                "roofline_pct", "kernels")
        widths = (36, 9, 6, 8, 10, 9, 8, 9, 7)
        title = ("", "ms", "share", "GFLOP", "GFLOP/s", "MB", "GB/s", "%roof", "kernels")
        lines = [head, ceil, "  ".join(t.rjust(w) if i else t.ljust(w)
                                      for i, (t, w) in enumerate(zip(title, widths)))]

        def row(r):
            vals = dict(r, gflops=r["flops"] / 1e9, mbytes=r["bytes"] / 1e6,
                        share=f"{100 * r['share']:.1f}%")
            out = []
            for i, (c, w) in enumerate(zip(cols, widths)):
                v = vals[c]
                text = v if isinstance(v, str) else (f"{v:d}" if isinstance(v, int)
                                                     else f"{v:.3f}" if v < 10 else f"{v:.1f}")
                out.append(text.ljust(w) if i == 0 else text.rjust(w))
            return "  ".join(out)

        lines += [row(r) for r in self.stages]
        lines.append(row(dict(self.total, name="total", share=1.0)))
        lines.append("per block kind:")
        lines += [row(r) for r in self.block_kinds]
        return "\n".join(lines)


def stage_record(name, seconds, flops, nbytes, kernels, total_seconds, ceiling, extra=None):
    attainable = ceiling.attainable(flops, nbytes)
    rate = flops / seconds if seconds > 0 else 0.0
    bw = nbytes / seconds if seconds > 0 else 0.0
    rec = dict(name=name, time_ms=1e3 * seconds,
               share=seconds / total_seconds if total_seconds > 0 else 0.0,
               flops=int(flops), bytes=int(nbytes), gflops_per_s=rate / 1e9, gb_per_s=bw / 1e9,
               roofline_pct=100 * rate / attainable if attainable > 0 else 0.0,
               pct_peak_flops=100 * rate / ceiling.flops_per_s,
               pct_peak_bandwidth=100 * bw / ceiling.bytes_per_s, kernels=int(kernels))
    rec.update(extra or {})
    return rec


def stage_speedups(baseline, other):
    """{stage: baseline time / other time} for two ProfileResults of the same model."""
    base = {s["name"]: s["time_ms"] for s in baseline.stages}
    return {s["name"]: base[s["name"]] / s["time_ms"] for s in other.stages
            if s["name"] in base and s["time_ms"] > 0}


def plot_profiles(results, path):
    """PNG: per run a bar of stacked stage times, runs side by side (e.g. stock vs fused), and
    per stage the runs' times side by side. Saved to ``path`` (any format matplotlib writes, by
    its extension; ".png" added to a name without one); returns the path written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot: needs matplotlib (`pip install matplotlib`)") from exc
    if not results:
        raise ValueError("results: expected at least one ProfileResult")
    path = plot_path(path)
    labels = [("fused" if r.meta["fused"] else "stock") + f" ({r.meta['schedule']})"
              for r in results]
    stage_names = [s["name"] for s in results[0].stages]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    colors = plt.get_cmap("tab10")
    for i, r in enumerate(results):
        bottom = 0.0
        by_name = {s["name"]: s for s in r.stages}
        for j, stage in enumerate(stage_names):
            t = by_name[stage]["time_ms"]
            left.bar(i, t, bottom=bottom, color=colors(j % 10), label=stage if i == 0 else None)
            bottom += t
    left.set_xticks(range(len(results)), labels)
    left.set_ylabel("time per batch (ms)")
    left.set_title("stage times, stacked")
    left.legend(fontsize=8)
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        by_name = {s["name"]: s for s in r.stages}
        xs = [j + i * width for j in range(len(stage_names))]
        bars = right.bar(xs, [by_name[s]["time_ms"] for s in stage_names], width, label=labels[i])
        for bar, s in zip(bars, stage_names):
            right.annotate(f"{by_name[s]['gb_per_s']:.0f}GB/s", (bar.get_x() + bar.get_width() / 2,
                           bar.get_height()), ha="center", va="bottom", fontsize=6, rotation=90)
    right.set_xticks([j + 0.4 - width / 2 for j in range(len(stage_names))], stage_names)
    right.set_ylabel("time (ms)")
    right.set_title("per stage (labels: achieved GB/s)")
    right.legend(fontsize=8)
    m = results[0].meta
    fig.suptitle(f"{m['model']} batch {m['batch']} {m['resolution']} {m['device']} {m['dtype']} "
                 f"{'train' if m['train'] else 'inference'}")
    fig.tight_layout()
    # The format is passed: the temporary file's extension is not the plot's.
    try:
        with replaced_whole(path) as tmp:
            fig.savefig(tmp, dpi=110, format=os.path.splitext(path)[1][1:].lower() or "png")
    finally:
        plt.close(fig)
    return path
