"""Sweep results as populations: grouping, per-model parameters, summaries, settings checks."""
import numpy as np

from .records import read_input
from .sweep import settings_diff


def load_results(paths):
    """Records of one or more sweep result files, each with a ``top1_error``."""
    if isinstance(paths, str):
        paths = [paths]
    records = []
    for path in paths:
        found = read_input(path, "paths")
        for r in found:
            if "top1_error" not in r:
                raise ValueError(f"paths: {path} holds a record without top1_error (a samples "
                                 f"file, not sweep results?)")
        records.extend(found)
    return records


def settings_warning(labelled):
    """None when the records of ``labelled``, (label, record) pairs such as
    ("r.jsonl (regnetx)", record), were all trained with the same settings; else a message naming
    the labels and the settings that differ (the errors then differ by training too)."""
    groups = []  # [settings, labels] per distinct settings, in order of first appearance
    for label, record in labelled:
        settings = record.get("settings")
        group = next((g for g in groups if not settings_diff(g[0], settings)), None)
        if group is None:
            group = [settings, []]
            groups.append(group)
        if label not in group[1]:
            group[1].append(label)
    if len(groups) < 2:
        return None
    (first, first_labels), parts = groups[0], []
    for settings, labels in groups[1:]:
        diff = settings_diff(first, settings)
        parts.append(f"{', '.join(f'{k}={b!r}' for k, (_, b) in diff.items())} in "
                     f"{', '.join(labels)} vs "
                     f"{', '.join(f'{k}={a!r}' for k, (a, _) in diff.items())} in "
                     f"{', '.join(first_labels)}")
    return "results trained with different settings are compared: " + "; ".join(parts)


def missing_trials_warning(path, records):
    """None when the results ``records`` of file ``path`` hold every trial of their sweep (as
    recorded in ``sweep_trials``; older files without it are taken as complete), else a message
    saying how many are missing: an interrupted sweep is then analyzed as a smaller population."""
    totals = {r["sweep_trials"] for r in records if isinstance(r.get("sweep_trials"), int)}
    if not totals:
        return None
    total = max(totals)
    have = len({r.get("trial") for r in records})
    if have >= total:
        return None
    return (f"{path} holds {have} of its sweep's {total} trials ({total - have} missing: run the "
            f"sweep again to finish it)")


def group_by_space(records):
    """{space name: [records]} in order of first appearance."""
    groups = {}
    for r in records:
        groups.setdefault(r.get("space", "?"), []).append(r)
    return groups


# Per-stage config lists whose built values the record's spec holds under the same key (the
# builder may change widths and group widths; depths as drawn; spec keeps 1/b, not b).
_BUILT = ("depths", "widths", "group_widths")


def model_parameters(record):
    """Scalar parameters of one model for scatter plots and the bootstrap.

    The space's own scalars (RegNet: depth, w0, wa, wm, group_width, bottleneck_ratio), per-stage
    values of list parameters (AnyNet: d1..d4, w1..w4, b1..b4, g1..g4), and, for every model,
    the derived total_depth, last_width, flops, params and acts.

    AnyNet's w_i and g_i are the built model's (``record["spec"]``), not the sampled ones
    (``record["config"]``): the group/bottleneck compatibility step may round a width to fit its
    group width or lower a group width to the inner width, and the trained model is the built
    one. (Records without them in ``spec`` fall back to the sampled values.) RegNet's scalars
    are the generator's inputs as sampled; its group_width is the sampled g, which a stage
    narrower than g builds with a smaller group."""
    out = {}
    spec = record.get("spec", {})
    for key, value in record.get("config", {}).items():
        if isinstance(value, (list, tuple)):
            built = spec.get(key) if key in _BUILT else None
            if isinstance(built, (list, tuple)) and len(built) == len(value):
                value = built
            prefix = {"depths": "d", "widths": "w", "bottleneck_ratios": "b",
                      "group_widths": "g"}.get(key, key)
            out.update({f"{prefix}{i + 1}": float(v) for i, v in enumerate(value)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    if spec:
        out["total_depth"] = float(sum(spec["depths"]))
        out["last_width"] = float(spec["widths"][-1])
    for key in ("flops", "params", "acts"):
        if key in record:
            out[key] = float(record[key])
    return out


def parameter_table(records, names=None):
    """(names, values) with values[i, k] = parameter k of model i (NaN where a model lacks it)."""
    params = [model_parameters(r) for r in records]
    if names is None:
        names = sorted({k for p in params for k in p})
    values = np.array([[p.get(k, np.nan) for k in names] for p in params], dtype=np.float64)
    return list(names), values.reshape(len(records), len(names))


def summarize(records):
    """Per space: n, how many of them diverged (recorded with maximal error), min/median/mean
    error and the best model's trial and config."""
    out = {}
    for space, group in group_by_space(records).items():
        errors = np.array([r["top1_error"] for r in group], dtype=np.float64)
        best = group[int(np.argmin(errors))]
        out[space] = {"n": len(group), "diverged": sum(bool(r.get("diverged")) for r in group),
                      "min_error": float(errors.min()),
                      "median_error": float(np.median(errors)), "mean_error": float(errors.mean()),
                      "best_trial": best.get("trial"), "best_config": best.get("config")}
    return out
