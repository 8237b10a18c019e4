"""torch.jit.trace and the operators' Python-side argument checks.

Under tracing, tensor sizes read in Python are traced values, so every shape check warns that
"the trace might not generalize". It does not need to: the operators take stride, padding and
groups as plain ints, so a trace of them is specialised to the example's shapes in any case (as
a trace of nn.Conv2d is), and the C++ kernels check every call's shapes again at run time.
"""
import functools
import warnings

import torch


def quiet_shape_checks_under_trace(fn):
    """Runs fn with torch.jit's TracerWarnings silenced while a trace is being recorded."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.jit.is_tracing():
            return fn(*args, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return fn(*args, **kwargs)

    return wrapper
