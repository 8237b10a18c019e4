"""Error EDFs, optionally weighted so that populations' complexity distributions match."""
import numpy as np


def _errors_and_weights(errors, weights):
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if errors.size == 0:
        raise ValueError("errors: expected at least one value")
    if not np.all(np.isfinite(errors)):
        raise ValueError("errors: expected finite values")
    if weights is None:
        return errors, np.full(errors.size, 1.0 / errors.size)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if weights.shape != errors.shape:
        raise ValueError(f"weights: expected {errors.size} values (one per error), "
                         f"got {weights.size}")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)) or weights.sum() <= 0:
        raise ValueError("weights: expected finite, non-negative values with a positive sum")
    return errors, weights / weights.sum()


def error_edf(errors, weights=None, at=None):
    """The (weighted) empirical distribution function of errors, F(e) = sum_i w_i 1[e_i < e].

    With ``at`` given, returns F evaluated at those errors (an array). Otherwise returns the step
    function as (x, F): x the sorted distinct errors and F[k] the fraction of models with error
    *at most* x[k] (the value just right of each step). Weights default to 1/n each."""
    errors, weights = _errors_and_weights(errors, weights)
    order = np.argsort(errors, kind="stable")
    xs, cum = errors[order], np.cumsum(weights[order])
    if at is not None:
        at = np.asarray(at, dtype=np.float64)
        below = np.searchsorted(xs, at, side="left")  # models with error strictly below e
        return np.where(below > 0, cum[np.maximum(below - 1, 0)], 0.0)
    last = np.r_[xs[1:] != xs[:-1], True]  # keep the last entry of each run of equal errors
    return xs[last], np.clip(cum[last], 0.0, 1.0)


def complexity_bins(populations, bins=10):
    """Log-spaced bin edges covering the complexity range all ``populations`` share."""
    if not (isinstance(bins, int) and bins >= 1):
        raise ValueError(f"bins: expected an integer >= 1, got {bins!r}")
    arrays = [np.asarray(p, dtype=np.float64).reshape(-1) for p in populations]
    if not arrays or any(a.size == 0 or np.any(a <= 0) for a in arrays):
        raise ValueError("complexities: expected non-empty populations of positive values")
    lo, hi = max(a.min() for a in arrays), min(a.max() for a in arrays)
    if lo > hi:
        raise ValueError(f"complexities: the populations' ranges do not overlap "
                         f"(common range would be [{lo:g}, {hi:g}])")
    if lo == hi:
        return np.array([lo, hi])
    return np.geomspace(lo, hi, bins + 1)


def matched_weights(populations, bins=10):
    """Per-model weights that give every population the same complexity distribution.

    Complexities (flops, say) are binned on log-spaced edges over the range all populations
    share; within each population every bin that all populations occupy receives equal total
    weight, split evenly among its models; models outside those bins get weight 0. The weighted
    complexity histograms are then identical (uniform over the common bins), so EDFs compare
    design spaces rather than their complexity distributions. Returns one array per population,
    each summing to 1."""
    arrays = [np.asarray(p, dtype=np.float64).reshape(-1) for p in populations]
    edges = complexity_bins(arrays, bins)
    n_bins = len(edges) - 1
    # A value on the last edge belongs to the last bin; values outside the range get -1.
    index = [np.where((a >= edges[0]) & (a <= edges[-1]),
                      np.minimum(np.searchsorted(edges, a, side="right") - 1, n_bins - 1), -1)
             for a in arrays]
    counts = [np.bincount(i[i >= 0], minlength=n_bins) for i in index]
    shared = np.all([c > 0 for c in counts], axis=0)
    if not shared.any():
        raise ValueError("complexities: no complexity bin holds models of every population; "
                         "use fewer bins")
    out = []
    for i, c in zip(index, counts):
        w = np.zeros(i.size)
        ok = i >= 0
        ok[ok] = shared[i[ok]]
        w[ok] = 1.0 / c[i[ok]]
        out.append(w / w.sum())
    return out
