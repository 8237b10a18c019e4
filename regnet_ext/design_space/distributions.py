"""Quantized random draws used by the design-space samplers (the pycls conventions).

Every function takes a ``numpy.random.Generator`` so a whole sample is reproducible from one seed.
"""
import math


def uniform_int(rng, low, high):
    """An integer drawn uniformly from [low, high] (both ends included)."""
    return int(rng.integers(low, high + 1))


def log_uniform(rng, low, high, quantum):
    """A multiple of ``quantum`` in [low, high], log-uniformly distributed.

    Draws f log-uniformly from (low - q', high] with q' = min(quantum, low / 2) and rounds it *up*
    to a multiple of ``quantum``: every multiple in range, the lowest one included, gets its share
    of the log-scale mass (rounding down would starve the top of the range).
    """
    lower = low - min(quantum, low / 2)
    f = math.exp(rng.uniform(math.log(lower), math.log(high)))
    steps = math.ceil(round(f / quantum, 9))  # round(.., 9): 24.000000001/8 must stay 3, not 4
    return _snap(max(low, min(high, steps * quantum)), quantum)


def power2_uniform(rng, low, high):
    """A power of two in [low, high], each exponent equally likely."""
    lo, hi = int(round(math.log2(low))), int(round(math.log2(high)))
    return 2 ** int(rng.integers(lo, hi + 1))


def power2_or_log_uniform(rng, low, high, quantum):
    """pycls's group-width draw: a power of two in [low, high]; when it reaches ``quantum`` it is
    redrawn log-uniformly among the multiples of ``quantum`` in [quantum, high]. Small values stay
    powers of two, large ones cover every multiple of ``quantum``, with a log-linear CDF overall."""
    value = power2_uniform(rng, low, high)
    if value >= quantum:
        value = log_uniform(rng, max(low, quantum), high, min(high, quantum))
    return int(value)


def choice(rng, values):
    """One of ``values``, uniformly."""
    return values[int(rng.integers(len(values)))]


def _snap(value, quantum):
    # Keep ints ints and give floats a clean decimal representation (26.3, not 26.300000000000004).
    if float(quantum).is_integer() and float(value).is_integer():
        return int(value)
    decimals = max(0, -math.floor(math.log10(quantum))) + 1
    return round(float(value), decimals)
