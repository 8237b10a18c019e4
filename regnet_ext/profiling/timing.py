"""Interleaved timing: candidates timed in the same run, round by round, the order rotating every
round so none always runs first; each summarised by the median of its rounds (DESIGN.md §6)."""
import statistics
import time


def calls_per_sample(fn, target_s=0.002, max_calls=1000):
    """How many back-to-back calls of `fn` make one timing sample of about `target_s` seconds."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return int(min(max_calls, max(1, target_s // once)))


def time_interleaved(candidates, *, rounds=15, warmup=3, target_s=0.002, progress=None):
    """Times each callable of `candidates` (name -> fn), interleaved, and returns
    name -> {"median_s", "min_s", "rounds_s", "calls"} (seconds per call).

    Each round runs every candidate once (``calls`` back-to-back calls each, calibrated so one
    sample lasts about `target_s`); the order rotates from round to round. Callables must
    synchronise their device themselves. ``progress(round_index)`` is called after each round."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    calls = {name: calls_per_sample(candidates[name], target_s) for name in names}
    samples = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, n = candidates[name], calls[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
        if progress is not None:
            progress(r)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "rounds_s": s,
                   "calls": calls[name]} for name, s in samples.items()}
