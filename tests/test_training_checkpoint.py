"""save_checkpoint: an interrupted write leaves the previous checkpoint and no temporary file."""
import pytest
import torch

from regnet_ext.training import checkpoint as checkpoint_module
from regnet_ext.training import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit, OSError])
def test_an_interrupted_save_removes_its_temporary_file(interruption, tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    save_checkpoint(path, {"epoch": 1, "weight": torch.ones(3)})
    real_save = torch.save

    def save_then_interrupt(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the temporary file is complete on disk...
        raise interruption()  # ...when Ctrl-C (or `regnet-ext train`'s SIGTERM) arrives

    monkeypatch.setattr(checkpoint_module.torch, "save", save_then_interrupt)
    with pytest.raises(interruption):
        save_checkpoint(path, {"epoch": 2, "weight": torch.zeros(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["weight"], torch.ones(3))


def test_a_killed_writers_temporary_file_goes_at_the_next_save(tmp_path):
    # SIGKILL (the OOM killer) during a save leaves the temporary file; nothing read it again,
    # and each such run left another.
    import os
    import socket
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    dead_pid = int(ended.stdout)
    host = socket.gethostname()
    path = tmp_path / "run.pt"
    dead = tmp_path / f"run.pt.tmp.{host}.{dead_pid}"
    live = tmp_path / f"run.pt.tmp.{host}.{os.getppid()}"  # a writer still running: kept
    elsewhere = tmp_path / f"run.pt.tmp.{host}x.{dead_pid}"  # another host's: its pid means nothing here
    other = tmp_path / f"other.pt.tmp.{host}.{dead_pid}"  # another checkpoint's
    for p in (dead, live, elsewhere, other):
        p.write_bytes(b"partial")
    save_checkpoint(path, {"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (path, live, elsewhere, other))
