"""DDP through torchrun: 2 processes on CPU (gloo), each on half of every global batch, end with
the parameters of one process trained on the whole batch.

The model has no BatchNorm on purpose: BatchNorm normalises with the statistics of the batch it
sees, so two half batches give a different function than the combined batch (SyncBatchNorm would
fix that but runs on GPUs only). Everything else - the gradient all-reduce, the data sharding, the
per-process batch size, the schedule, the sharded evaluation - must match exactly.

This file is also the worker that torchrun launches (see ``__main__`` below).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(epochs=3, batch_size=8, lr=0.2, weight_decay=1e-3, warmup_epochs=1, seed=3,
                progress=False)


def make_problem():
    """A float64 model without BatchNorm and fixed datasets (20 train samples: not a multiple of
    the global batch, so the dropped partial batch is exercised too)."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(20, 3, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (20,), generator=g)
    xv = torch.randn(9, 3, 6, 6, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 4, (9,), generator=g)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 4)).double()
    train = [(x[i], int(y[i])) for i in range(len(y))]
    val = [(xv[i], int(yv[i])) for i in range(len(yv))]
    return model, train, val


def worker(out_dir):
    from regnet_ext.training import fit

    model, train, val = make_problem()
    result = fit(model, train, val, checkpoint=out_dir / "ckpt.pt", **SETTINGS)
    rank = int(os.environ["RANK"])
    torch.save({"state": model.state_dict(), "top1_acc": result["top1_acc"],
                "world_size": result["world_size"], "history": result["history"]},
               out_dir / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_the_combined_batch(tmp_path):
    from regnet_ext.training import fit, load_checkpoint

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", __file__, str(tmp_path)]
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    model, train, val = make_problem()
    single = fit(model, train, val, **SETTINGS)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r in ranks:
        assert r["world_size"] == 2
        for key, value in model.state_dict().items():
            torch.testing.assert_close(r["state"][key], value, rtol=1e-12, atol=1e-12)
        # Sharded evaluation summed over both processes covers each sample exactly once.
        assert r["top1_acc"] == single["top1_acc"]
        for ours, ref in zip(r["history"], single["history"]):
            assert ours["lr"] == ref["lr"]
            assert ours["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-12)
    # Rank 0 alone wrote the checkpoint, with every process's RNG state.
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["epoch"] == SETTINGS["epochs"] and len(ckpt["rng"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "rank0.pt", "rank1.pt"]


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    worker(Path(sys.argv[1]))
    # fit() destroyed its process group; torch 2.14's gloo can still abort in interpreter teardown
    # now and then ("terminate called without an active exception"), after the results are saved.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
