"""torch.profiler without kineto's console noise.

Kineto (torch.profiler's C++ side) writes lines such as "USDT: ... profiler_start" to file
descriptor 2 on every start and stop, which floods the output of anything that profiles many
small regions (the per-stage profiler, the model benchmark's peak-memory pass). Here fd 2 goes
to /dev/null only while the profiler starts and stops, so nothing of the profiled code is hidden.
"""
import contextlib
import os
import sys


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def quiet_profile(**kwargs):
    """torch.profiler.profile(**kwargs) as a context manager, started and stopped quietly."""
    from torch.profiler import profile

    prof = profile(**kwargs)
    with _quiet_stderr():
        prof.__enter__()
    try:
        yield prof
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
