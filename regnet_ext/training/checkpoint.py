"""Training checkpoints: one file holding model, optimizer, scheduler, epoch, history and the RNG
state of every process, written atomically so that an interrupted save never leaves a torn file."""
import os
import random
import socket

import numpy as np
import torch

FORMAT_VERSION = 1


def save_checkpoint(path, state):
    """Writes ``state`` to ``path`` via a temporary file in the same folder and os.replace.

    An exception during the write (KeyboardInterrupt included) removes the temporary file and
    leaves ``path`` as it was. A signal that kills the process (SIGTERM by default) cannot: the
    caller makes it unwind (`regnet-ext train` turns SIGTERM into SystemExit). What SIGKILL (the
    OOM killer) or a power loss leaves goes at the next save to the same path on this host."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _remove_dead_writers_temporaries(path)
    tmp = f"{_temporary_prefix(path)}{os.getpid()}"
    try:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _temporary_prefix(path):
    """The temporaries' names, ending in the writer's process id: the host is in the name, so that
    a cleanup never takes a live writer's file on another host sharing the folder."""
    return f"{path}.tmp.{socket.gethostname()}."


def _remove_dead_writers_temporaries(path):
    prefix = os.path.basename(_temporary_prefix(path))
    folder = os.path.dirname(os.path.abspath(path))
    for name in os.listdir(folder):
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not _process_alive(int(pid)):
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:  # another process's cleanup came first
                pass


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def load_checkpoint(path, map_location="cpu"):
    """Reads a checkpoint written by save_checkpoint (tensors and plain values only)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint: no checkpoint file at {path!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torn, truncated or another format: torch raises many kinds
        reason = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0].split('. ')[0]}"
        raise ValueError(f"checkpoint: {path!r} is not a readable regnet_ext training checkpoint "
                         f"({reason})") from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint: {path!r} is not a regnet_ext training checkpoint "
                         f"(format_version {FORMAT_VERSION} expected)")
    return state


def capture_rng_state():
    """This process's torch (CPU and CUDA), numpy and Python RNG states, as tensors and ints."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": python_version, "state": list(python_state),
                   "gauss": python_gauss},
    }


def restore_rng_state(state):
    """Inverse of capture_rng_state."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
