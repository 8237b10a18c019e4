"""Figures: error EDFs of several spaces, and error against each parameter (matplotlib)."""
import numpy as np

from .._paths import plot_path
from .bootstrap import empirical_bootstrap
from .edf import error_edf


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path):
    try:
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)  # figures otherwise pile up in pyplot's registry across calls
    return path


def plot_edfs(populations, path, *, weights=None, title=None, xlabel="top-1 error (%)"):
    """One EDF curve per population on one plot, saved to ``path`` (PNG, SVG, PDF...; see
    plot_path: a name without an extension gets ".png"). Returns the path written.

    populations: {label: errors}; weights: optional {label: per-model weights} (see
    edf.matched_weights). The legend shows each population's size and minimum error."""
    path = plot_path(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    for label, errors in populations.items():
        w = None if weights is None else weights.get(label)
        x, f = error_edf(errors, w)
        x = np.r_[x[0], x]
        f = np.r_[0.0, f]
        ax.step(x, f, where="post", linewidth=2,
                label=f"{label} (n={len(errors)}, min {np.min(errors):.1f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cumulative prob." + (" (weighted)" if weights is not None else ""))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return _save(plt, fig, path)


def plot_error_vs_parameters(names, values, errors, path, *, title=None, bootstrap=True,
                             fraction=0.25, repetitions=10_000, seed=0):
    """A grid of scatter plots, error against each parameter, with a trend line (median error
    in equal-count bins) and, when ``bootstrap``, the empirical-bootstrap 95% interval of the
    best model's value shaded. values[i, k] is parameter names[k] of model i. Saved to ``path``
    (see plot_path); returns the path written."""
    path = plot_path(path)
    plt = _pyplot()
    errors = np.asarray(errors, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), dpi=110, squeeze=False)
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        ok = np.isfinite(values[:, k])
        v, e = values[ok, k], errors[ok]
        ax.scatter(v, e, s=10, alpha=0.6)
        if v.size >= 4:
            order = np.argsort(v, kind="stable")
            bins = np.array_split(order, min(8, max(2, v.size // 5)))
            ax.plot([np.median(v[b]) for b in bins], [np.median(e[b]) for b in bins], "k-",
                    linewidth=1.5)
        if bootstrap and v.size >= 2:
            r = empirical_bootstrap(v, e, fraction=fraction, repetitions=repetitions, seed=seed)
            ax.axvspan(r.low, r.high, color="tab:orange", alpha=0.2)
            ax.axvline(r.median, color="tab:orange", linewidth=1)
        ax.set_xlabel(name)
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].axis("off")
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)
