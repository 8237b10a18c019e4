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
