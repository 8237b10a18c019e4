"""The argument checks the sub-commands share: options named as on the command line, the
device, whether fuse() can run here; and SIGTERM handling for long commands."""
import contextlib
import signal
import threading


def option_error(exc, args, renames=None):
    """``exc``'s message with its leading Python parameter name (``batch_size: ...``) replaced by
    the option that sets it (``--batch-size: ...``, ``renames`` maps the names that differ);
    any other message unchanged."""
    name, sep, rest = str(exc).partition(": ")
    name = (renames or {}).get(name, name)
    if sep and name.isidentifier() and not name.startswith("_") and hasattr(args, name):
        return f"--{name.replace('_', '-')}: {rest}"
    return str(exc)


def first_below_one(args, names):
    """The error message for the first of the int options ``names`` below 1, or None."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"--{name.replace('_', '-')}: expected an int >= 1, got {value}"
    return None


def resolve_device(name):
    """cpu, cuda[:N] or auto (cuda when available) -> the device name; ValueError otherwise."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu, cuda or auto, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device: cuda requested but torch.cuda.is_available() is False")
    return name


def fuse_available():
    """Whether regnet_ext.fuse() can run here: it needs the compiled extension."""
    from .. import _extension

    return _extension.load()


# What the --fused and fuse()-based commands say when fuse_available() is False.
FUSE_MISSING = ("the fused kernels are not available here (the compiled extension "
                "regnet_ext._C did not load: `regnet-ext info` says why)")


# --model's help where a model is built by name (profiling.profiler.build_model).
MODEL_BY_NAME_HELP = ("ours by name (RegNetY-400MF, regnet_y_400mf, regnety_004), or "
                      "torchvision:NAME / timm:NAME (default RegNetY-400MF)")


def _ignore_signal(signum, frame):
    pass


@contextlib.contextmanager
def sigterm_unwinds():
    """Within the block SIGTERM raises SystemExit(143), as Ctrl-C raises KeyboardInterrupt, so that
    finally blocks run: killed outright, a process leaves its temporary files and worker pools
    behind. A SIGTERM sent to the whole process group also ends the DataLoader workers, which the
    main process would report while it unwinds (a RuntimeError, or a traceback from torch's
    SIGCHLD handler): once SIGTERM has come, SIGCHLD is ignored and any error leaving the block
    is SystemExit(143) too.
    (Signal handlers can only be set in the main thread: elsewhere this does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def exit_on_signal(signum, frame):
        received.append(signum)
        if hasattr(signal, "SIGCHLD"):  # the process is ending: its workers' ends are no news
            # (A Python no-op, not SIG_DFL: CPython reports a pending signal left without one.)
            signal.signal(signal.SIGCHLD, _ignore_signal)
        raise SystemExit(128 + signum)  # the shell's status for a process ended by that signal

    previous = signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        yield
    except Exception:
        if received:
            raise SystemExit(128 + received[0]) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
