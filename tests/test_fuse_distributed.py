"""A fused RegNet under DistributedDataParallel: 2 processes on CPU (gloo, launched by torchrun as in
test_training_distributed.py), each on half of every global batch, against one *stock* process.

* Frozen BatchNorm (BN layers in eval mode, as in fine-tuning): the model is then a function of
  each sample alone, so DDP on two halves must give exactly the parameters of one process on the
  combined batch.
* Training-mode BatchNorm: each process normalises with its own half's statistics (SyncBatchNorm
  would share them but runs on GPUs only), so the single-process reference averages the losses of
  the two halves, each forwarded on its own.

This file is also the worker that torchrun launches (see ``__main__`` below).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
STEPS = 3
MODES = ("frozen_bn", "batch_stats")


def make_model():
    from regnet_ext.models import AnyNet, AnyNetSpec

    torch.manual_seed(3)
    spec = AnyNetSpec(depths=(1, 1), widths=(16, 24), group_widths=(8, 8), se_ratio=0.25,
                      stem_width=8, num_classes=5)
    return AnyNet(spec).double()


def global_batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return (torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64),
            torch.randint(0, 5, (8,), generator=g))


def set_mode(model, mode):
    model.train()
    if mode == "frozen_bn":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


def worker(out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from regnet_ext.nn import FusedResBottleneck, fuse

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    states = {}
    for mode in MODES:
        model = fuse(make_model())
        assert any(isinstance(m, FusedResBottleneck) for m in model.modules())
        ddp = DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        for step in range(STEPS):
            x, y = global_batch(step)
            set_mode(ddp, mode)
            loss = nn.functional.cross_entropy(ddp(x.chunk(WORLD)[rank]), y.chunk(WORLD)[rank])
            opt.zero_grad()
            loss.backward()
            opt.step()
        states[mode] = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.save(states, out_dir / f"rank{rank}.pt")
    # torch 2.14's gloo teardown aborts now and then ("terminate called without an active
    # exception", also in plain-PyTorch DDP scripts); the results are on disk, so leave without it.
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def single_process(mode):
    model = make_model()  # stock: the reference is independent of the fused kernels
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        x, y = global_batch(step)
        set_mode(model, mode)
        if mode == "frozen_bn":
            loss = nn.functional.cross_entropy(model(x), y)
        else:
            loss = sum(nn.functional.cross_entropy(model(xh), yh)
                       for xh, yh in zip(x.chunk(WORLD), y.chunk(WORLD))) / WORLD
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dict(model.named_parameters())


@pytest.mark.slow
def test_ddp_two_gloo_processes_equal_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={WORLD}", __file__, str(tmp_path)]
    proc = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for mode in MODES:
        expected = single_process(mode)
        initial = dict(make_model().named_parameters())
        for r in ranks:
            for key, value in expected.items():
                assert not torch.equal(value, initial[key]), f"{mode} {key} never moved"
                torch.testing.assert_close(r[mode][key], value.detach(), rtol=1e-10, atol=1e-12,
                                           msg=lambda m, k=key: f"{mode} {k}: {m}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    worker(Path(sys.argv[1]))
