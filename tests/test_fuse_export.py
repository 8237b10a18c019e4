"""A fused RegNet under torch.compile(fullgraph=True) (eval and a training step), torch.jit.trace,
torch.export (and an AOTInductor package of it), channels_last training and CPU autocast (bfloat16), each against the eager fused
model or the stock model. A small RegNetY keeps compile times short; it has every block kind
(projection and identity shortcuts, SE, grouped 3x3 convs with stride 1 and 2).
"""
import copy
import warnings

import pytest

import torch
from torch import nn

from regnet_ext.models import AnyNet, AnyNetSpec
from regnet_ext.nn import FusedResBottleneck, fuse
from test_fuse import randomize
from tolerances import assert_close_to_reference

SMALL_SPEC = AnyNetSpec(depths=(1, 2), widths=(16, 32), group_widths=(8, 8), se_ratio=0.25,
                        stem_width=8, num_classes=10)


def small_pair(dtype=torch.float32):
    torch.manual_seed(0)
    stock = randomize(AnyNet(SMALL_SPEC)).to(dtype)
    fused = fuse(copy.deepcopy(stock))
    assert sum(isinstance(m, FusedResBottleneck) for m in fused.modules()) == 3
    return stock, fused


def images(n=4, size=32, dtype=torch.float32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rel_close(actual, expected, rel):
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * expected.abs().max().item())


def _train_step(model, x, target):
    loss = nn.functional.cross_entropy(model(x), target)
    loss.backward()
    return loss.detach()


@pytest.mark.slow
def test_compile_fullgraph_eval_matches_eager():
    torch._dynamo.reset()
    _, fused = small_pair()
    fused.eval()
    compiled = torch.compile(fused, fullgraph=True)
    x = images()
    with torch.no_grad():
        rel_close(compiled(x), fused(x), 1e-5)
        rel_close(compiled(images(seed=2)), fused(images(seed=2)), 1e-5)


@pytest.mark.slow
def test_compile_fullgraph_training_step_matches_eager():
    torch._dynamo.reset()
    _, eager = small_pair()
    model = copy.deepcopy(eager)
    eager.train(), model.train()
    compiled = torch.compile(model, fullgraph=True)
    x, target = images(), torch.randint(0, 10, (4,))
    rel_close(_train_step(compiled, x, target), _train_step(eager, x, target), 1e-5)
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        rel_close(p.grad, q.grad, 1e-4)
    for (key, ours), ref in zip(model.state_dict().items(), eager.state_dict().values()):
        if "running" in key:
            rel_close(ours, ref, 1e-5)
        elif "num_batches" in key:
            assert int(ours) == int(ref) == 1


def test_jit_trace_of_eval_model():
    _, fused = small_pair()
    fused.eval()
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(fused, images())
        assert "regnet_ext::conv_bn_act_eval" in str(traced.inlined_graph)
    # The operators' shape checks read traced sizes; their warnings would be noise (see
    # regnet_ext/ops/_tracing.py).
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    with torch.no_grad():
        rel_close(traced(images(seed=3)), fused(images(seed=3)), 1e-6)


def test_torch_export_of_eval_model():
    _, fused = small_pair()
    fused.eval()
    program = torch.export.export(fused, (images(),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "regnet_ext.conv_bn_act_eval.default" in targets and "regnet_ext.squeeze_excite.default" in targets
    with torch.no_grad():
        rel_close(program.module()(images(seed=4)), fused(images(seed=4)), 1e-6)


def test_a_saved_trace_and_export_load_in_a_new_process_after_importing_the_operators(tmp_path):
    # Both hold calls of our operators, which `import regnet_ext.ops` registers with torch.
    import subprocess
    import sys

    _, fused = small_pair()
    fused.eval()
    x = images()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit, not removed
        expected = fused(x)
        torch.jit.save(torch.jit.trace(fused, x), tmp_path / "traced.pt")
    torch.export.save(torch.export.export(fused, (x,)), tmp_path / "exported.pt2")
    torch.save(x, tmp_path / "x.pt")
    script = (f"import torch, regnet_ext.ops\nx = torch.load({str(tmp_path / 'x.pt')!r})\n"
              f"traced = torch.jit.load({str(tmp_path / 'traced.pt')!r})\n"
              f"exported = torch.export.load({str(tmp_path / 'exported.pt2')!r}).module()\n"
              f"with torch.no_grad():\n    torch.save((traced(x), exported(x)), {str(tmp_path / 'y.pt')!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for y in torch.load(tmp_path / "y.pt"):
        rel_close(y, expected, 1e-6)


def test_an_aoti_package_runs_in_a_new_process_after_importing_the_operators(tmp_path):
    # Deployment without Python's model code: torch.export with a dynamic batch, then AOTInductor
    # (freezing), as the README shows; the package calls our operators through the dispatcher.
    from torch._inductor import aoti_compile_and_package

    stock, fused = small_pair()
    cl = torch.channels_last
    stock, fused = stock.eval().to(memory_format=cl), fused.eval().to(memory_format=cl)
    xs = [images(n).contiguous(memory_format=cl) for n in (4, 1)]
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        expected = [stock(x) for x in xs]
        program = torch.export.export(fused, (xs[0],), dynamic_shapes=({0: batch},))
        aoti_compile_and_package(program, package_path=str(tmp_path / "fused.pt2"),
                                 inductor_configs={"freezing": True})
    assert any("regnet_ext" in str(node.target) for node in program.graph.nodes)
    for y, e in zip(run_package_in_a_new_process(tmp_path / "fused.pt2", xs, tmp_path), expected):
        rel_close(y, e, 1e-5)


def run_package_in_a_new_process(package, xs, tmp_path, through_load_package=False):
    """The AOTInductor package's outputs for the batches xs, from a fresh interpreter that imports
    regnet_ext.ops and loads it with torch's loader, or (through_load_package) with
    regnet_ext.deploy.load_package alone, as a serving process does."""
    import subprocess
    import sys

    torch.save(xs, tmp_path / "xs.pt")
    load = ("from regnet_ext.deploy import load_package as load" if through_load_package else
            "import regnet_ext.ops\nload = torch._inductor.aoti_load_package")
    script = (f"import torch\n{load}\nxs = torch.load({str(tmp_path / 'xs.pt')!r})\n"
              f"runner = load({str(package)!r})\n"
              f"with torch.no_grad():\n    torch.save([runner(x) for x in xs], {str(tmp_path / 'ys.pt')!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "ys.pt")


def test_channels_last_training_step_matches_stock():
    stock, fused = small_pair(torch.float64)
    cl = torch.channels_last
    stock, fused = stock.to(memory_format=cl).train(), fused.to(memory_format=cl).train()
    x, target = images(dtype=torch.float64).contiguous(memory_format=cl), torch.randint(0, 10, (4,))
    out = fused(x)
    rel_close(out, stock(x), 1e-10)
    nn.functional.cross_entropy(out, target).backward()
    nn.functional.cross_entropy(stock(x), target).backward()
    for p, q in zip(fused.parameters(), stock.parameters()):
        rel_close(p.grad, q.grad, 1e-9)
        # In the Parameter's strides, as stock's (else AccumulateGrad copies and DDP warns).
        assert p.grad.stride() == p.stride() == q.grad.stride()
    with torch.no_grad():
        assert fused.s1(fused.stem(x)).is_contiguous(memory_format=cl)  # the layout is kept


def test_cpu_autocast_bfloat16_is_as_accurate_as_stock():
    stock, fused = small_pair()
    reference = copy.deepcopy(stock).double()
    x = images()
    for mode in ("eval", "train"):
        for m in (stock, fused, reference):
            getattr(m, mode)()
        with torch.no_grad():
            expected = reference(x.double())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                plain, ours = stock(x), fused(x)
        assert ours.dtype == plain.dtype == torch.bfloat16
        assert_close_to_reference(ours, expected, plain_torch=plain, name=f"autocast {mode}")
    # Running statistics stay float32 and were updated like stock's.
    for (key, ours), ref in zip(fused.state_dict().items(), stock.state_dict().values()):
        if "running" in key:
            assert ours.dtype == torch.float32
            torch.testing.assert_close(ours, ref, rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_compile_under_bfloat16_autocast_is_as_accurate_as_stock():
    # The compiled graph casts the weights into buffers that it reuses for the next layers' casts
    # without a version bump, so a fold cached on those tensors was another layer's (0.27
    # relative error on RegNetY-400MF): the trace records the operator without the cache.
    torch._dynamo.reset()
    stock, fused = small_pair()
    reference = copy.deepcopy(stock).double()
    for m in (stock, fused, reference):
        m.eval()
    compiled = torch.compile(fused, fullgraph=True)
    for seed in (1, 2):
        x = images(seed=seed)
        with torch.no_grad():
            expected = reference(x.double())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                plain, ours = stock(x), compiled(x)
        assert_close_to_reference(ours, expected, plain_torch=plain, name=f"compiled autocast, images {seed}")


def test_cpu_autocast_bfloat16_backward_reaches_float32_parameters():
    _, fused = small_pair()
    fused.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(fused(images()), torch.randint(0, 10, (4,)))
    loss.backward()
    for name, p in fused.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name
