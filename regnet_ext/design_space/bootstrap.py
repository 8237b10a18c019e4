"""The empirical bootstrap the paper uses to find where the good models lie."""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BootstrapResult:
    """Interval of the best model's parameter value: [low, high] holds it with probability
    ``confidence``; ``median`` is the central estimate."""

    low: float
    median: float
    high: float
    confidence: float
    sample_size: int
    repetitions: int

    def to_dict(self):
        return dict(self.__dict__)


def empirical_bootstrap(values, errors, *, fraction=0.25, repetitions=10_000, confidence=0.95,
                        seed=0):
    """Repeatedly draws ``fraction`` of the (value, error) pairs with replacement, keeps the value
    of the pair with the lowest error, and returns the central ``confidence`` interval of those
    values (paper defaults: 25% samples, 10^4 repetitions, 95% interval).

    ``fraction`` > 1 is read as an absolute sample size. Ties in error go to the first pair."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if values.size == 0 or values.shape != errors.shape:
        raise ValueError(f"values, errors: expected two equal-length, non-empty sequences, got "
                         f"{values.size} and {errors.size}")
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(errors))):
        raise ValueError("values, errors: expected finite numbers")
    if not fraction > 0:
        raise ValueError(f"fraction: expected > 0, got {fraction!r}")
    if not (isinstance(repetitions, (int, np.integer)) and repetitions >= 1):
        raise ValueError(f"repetitions: expected an integer >= 1, got {repetitions!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected 0 < confidence < 1, got {confidence!r}")
    n = values.size
    size = int(fraction) if fraction > 1 else max(1, int(round(n * fraction)))
    rng = np.random.default_rng(seed)
    best = np.empty(repetitions, dtype=np.float64)
    chunk = max(1, 2_000_000 // size)  # bound memory: chunk * size indices at a time
    for start in range(0, repetitions, chunk):
        stop = min(repetitions, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, size))
        winner = idx[np.arange(stop - start), np.argmin(errors[idx], axis=1)]
        best[start:stop] = values[winner]
    tail = (1 - confidence) / 2 * 100
    low, median, high = np.percentile(best, [tail, 50, 100 - tail])
    return BootstrapResult(float(low), float(median), float(high), float(confidence), size,
                           int(repetitions))
