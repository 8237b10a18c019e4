"""The CUDA implementations of every regnet_ext operator, checked on a GPU (skipped without one;
run with `make test-gpu`).

Each result is compared with a float64 reference computed by stock PyTorch on the CPU and with the
CPU operator; 16-bit results must stay within a small multiple of stock PyTorch's own error at that
precision on the same GPU (tests/tolerances.py). Beyond values: gradients, running statistics,
torch.library.opcheck on CUDA tensors, torch.compile(fullgraph=True), CUDA-graph capture (which
also proves the operators make no host-device synchronisation), non-default streams and devices.
"""
import dataclasses
import math
import random

import pytest
import torch
import torch.nn.functional as F

from tolerances import assert_close_to_reference, max_error

from regnet_ext.tolerances import full_float32, relu_with_mask

pytestmark = pytest.mark.cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = 1e-5
MOMENTUM = 0.1
GRAD_NAMES = ("x", "weight", "bias", "gamma", "beta", "residual")


@pytest.fixture(scope="module", autouse=True)
def _operators():
    """Loads the extension and the Python face (fake kernels, autograd) once."""
    import regnet_ext.ops  # noqa: F401

    assert torch._C._dispatch_has_kernel_for_dispatch_key("regnet_ext::conv_bn_act_eval", "CUDA"), \
        "the extension was built without its CUDA kernels (build with REGNET_EXT_CUDA=1)"
    with full_float32():  # float32 results are held to float32 accuracy, not cuDNN's default TF32
        yield


@dataclasses.dataclass(frozen=True)
class Geometry:
    batch: int
    c_in: int
    c_out: int
    kernel: int
    stride: int
    groups: int
    height: int
    width: int
    residual: bool
    relu: bool
    bias: bool
    channels_last: bool

    @property
    def padding(self):
        return self.kernel // 2

    @property
    def out_hw(self):
        return tuple((s + 2 * self.padding - self.kernel) // self.stride + 1 for s in (self.height, self.width))

    def __str__(self):
        return (f"N{self.batch}_{self.c_in}to{self.c_out}_k{self.kernel}s{self.stride}g{self.groups}_"
                f"{self.height}x{self.width}{'_res' if self.residual else ''}{'_relu' if self.relu else ''}"
                f"{'_bias' if self.bias else ''}_{'nhwc' if self.channels_last else 'nchw'}")


def _random_geometries(seed, count):
    """RegNet-like convs with random sizes: grouped 3x3 with group widths 8..232 (often not a power
    of two), 1x1 GEMMs (stride 1 and 2), narrow-group and stem convs that take the fallback path."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = ["grouped", "grouped", "grouped", "pointwise", "pointwise", "stem", "narrow"][i % 7]
        hw = (rng.randint(3, 23), rng.randint(3, 23))
        common = dict(batch=rng.randint(1, 4), height=hw[0], width=hw[1], residual=rng.random() < 0.5,
                      relu=rng.random() < 0.7, bias=rng.random() < 0.3, channels_last=rng.random() < 0.75)
        if kind == "grouped":
            width = rng.choice([8, 16, 24, 40, 48, 56, 64, 112, 120, 232])
            groups = rng.randint(1, max(1, 96 // width))
            g = Geometry(c_in=width * groups, c_out=width * groups, kernel=3, stride=rng.choice([1, 2]),
                         groups=groups, **common)
        elif kind == "pointwise":
            g = Geometry(c_in=8 * rng.randint(1, 24), c_out=8 * rng.randint(1, 24), kernel=1,
                         stride=rng.choice([1, 2]), groups=1, **common)
        elif kind == "stem":
            g = Geometry(c_in=3, c_out=rng.choice([16, 32]), kernel=3, stride=2, groups=1, **common)
        else:
            width = rng.choice([1, 2, 4, 6, 12])
            groups = rng.randint(2, 6)
            g = Geometry(c_in=width * groups, c_out=width * groups, kernel=3, stride=rng.choice([1, 2]),
                         groups=groups, **common)
        out.append(g)
    return out


GEOMETRIES = _random_geometries(seed=2020, count=14)


def _inputs(g, seed):
    """Float64 CPU masters of every input; cast with _to()."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, low=-1.0, high=1.0):
        return torch.rand(*shape, generator=gen, dtype=torch.float64) * (high - low) + low

    fan_in = g.c_in // g.groups * g.kernel * g.kernel
    ho, wo = g.out_hw
    return {
        "x": rand(g.batch, g.c_in, g.height, g.width),
        "weight": rand(g.c_out, g.c_in // g.groups, g.kernel, g.kernel) * math.sqrt(3.0 / fan_in),
        "bias": rand(g.c_out) if g.bias else None,
        "gamma": rand(g.c_out, low=0.5, high=1.5),
        "beta": rand(g.c_out, low=-0.5, high=0.5),
        "running_mean": rand(g.c_out, low=-0.3, high=0.3),
        "running_var": rand(g.c_out, low=0.5, high=2.0),
        "residual": rand(g.batch, g.c_out, ho, wo) if g.residual else None,
        "grad_y": rand(g.batch, g.c_out, ho, wo),
    }


def _to(t, dtype, device, channels_last):
    if t is None:
        return None
    t = t.to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def _cast(master, dtype, device, g):
    return {k: _to(v, dtype, device, g.channels_last) for k, v in master.items()}


def reference(t, g, training, relu_mask=None):
    z = F.conv2d(t["x"], t["weight"], t["bias"], g.stride, g.padding, 1, g.groups)
    y = F.batch_norm(z, None if training else t["running_mean"], None if training else t["running_var"],
                     t["gamma"], t["beta"], training, MOMENTUM, EPS)
    if t["residual"] is not None:
        y = y + t["residual"]
    return relu_with_mask(y, relu_mask) if g.relu else y


def reference_grads(t, g, training, relu_mask):
    leaves = {k: t[k].detach().clone().requires_grad_(True) for k in GRAD_NAMES if t[k] is not None}
    y = reference({**t, **leaves}, g, training, relu_mask)
    y.backward(t["grad_y"])
    return {k: v.grad for k, v in leaves.items()}


def eval_op(t, g):
    return torch.ops.regnet_ext.conv_bn_act_eval(t["x"], t["weight"], t["bias"], t["gamma"], t["beta"],
                                                 t["running_mean"], t["running_var"], t["residual"], g.stride,
                                                 g.padding, g.groups, EPS, g.relu)


def train_op(t, g):
    return torch.ops.regnet_ext.conv_bn_act_train(t["x"], t["weight"], t["bias"], t["gamma"], t["beta"],
                                                  t["residual"], g.stride, g.padding, g.groups, EPS, g.relu)


def backward_op(t, g, y, z, mean, var, training):
    grads = torch.ops.regnet_ext.conv_bn_act_backward(t["grad_y"], y, t["x"], t["weight"], t["bias"], t["gamma"],
                                                      z, mean, var, g.stride, g.padding, g.groups, EPS, g.relu,
                                                      training, True, True)
    return dict(zip(GRAD_NAMES, grads))


def _check_three_ways(cuda, cpu, ref, plain_cuda, plain_cpu, name):
    """CUDA vs float64 reference, CPU vs the same reference, and CUDA vs CPU."""
    assert cuda.device.type == "cuda"
    assert_close_to_reference(cuda, ref, plain_torch=plain_cuda, name=f"{name} (CUDA)")
    assert_close_to_reference(cpu, ref, plain_torch=plain_cpu, name=f"{name} (CPU)")
    if cuda.dtype == torch.float32:
        torch.testing.assert_close(cuda.cpu(), cpu, atol=4e-4, rtol=4e-4, msg=lambda m: f"{name} CUDA vs CPU: {m}")
    else:  # both are within their allowance of the reference, so of each other
        bound = 2 * max(max_error(cuda, ref), max_error(cpu, ref)) + 1e-6
        assert max_error(cuda, cpu) <= bound, f"{name}: CUDA vs CPU differ by {max_error(cuda, cpu)}"


# ---- conv_bn_act ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("g", GEOMETRIES, ids=str)
def test_eval_forward(g, dtype):
    m = _inputs(g, seed=1)
    tc, tp = _cast(m, dtype, "cuda", g), _cast(m, dtype, "cpu", g)
    y = eval_op(tc, g)
    assert y.is_contiguous(memory_format=torch.channels_last) == g.channels_last or y.shape[-2:] == (1, 1)
    _check_three_ways(y, eval_op(tp, g), reference(m, g, False), reference(tc, g, False), reference(tp, g, False),
                      f"eval y {g}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("g", GEOMETRIES, ids=str)
def test_train_forward(g, dtype):
    m = _inputs(g, seed=2)
    tc, tp = _cast(m, dtype, "cuda", g), _cast(m, dtype, "cpu", g)
    y, z, mean, var = train_op(tc, g)
    y_cpu, z_cpu, mean_cpu, var_cpu = train_op(tp, g)
    acc = torch.float32
    assert mean.dtype == acc and var.dtype == acc and mean.shape == (g.c_out,)
    _check_three_ways(y, y_cpu, reference(m, g, True), reference(tc, g, True), reference(tp, g, True),
                      f"train y {g}")
    z_ref = F.conv2d(m["x"], m["weight"], m["bias"], g.stride, g.padding, 1, g.groups)
    z_plain = F.conv2d(tc["x"], tc["weight"], tc["bias"], g.stride, g.padding, 1, g.groups)
    z_plain_cpu = F.conv2d(tp["x"], tp["weight"], tp["bias"], g.stride, g.padding, 1, g.groups)
    _check_three_ways(z, z_cpu, z_ref, z_plain, z_plain_cpu, f"conv_out {g}")
    # The statistics are float32 for every input dtype: held to stock PyTorch's error computing
    # them from its own conv output in that dtype (3x, plus a float32-sized floor).
    for name, ours, ours_cpu, stat in (("mean", mean, mean_cpu, lambda v: v.double().mean((0, 2, 3))),
                                       ("var", var, var_cpu, lambda v: v.double().var((0, 2, 3), unbiased=False))):
        ref = stat(z_ref)
        allowed = 3 * max_error(stat(z_plain), ref) + 2e-4 * max(ref.abs().max().item(), 1.0)
        assert max_error(ours, ref) <= allowed, f"{name} {g}: error {max_error(ours, ref):.3g} > {allowed:.3g}"
        assert max_error(ours_cpu, ref) <= allowed, f"{name} (CPU) {g}: error {max_error(ours_cpu, ref):.3g}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("g", GEOMETRIES, ids=str)
def test_backward(g, dtype, training):
    """Both backends' backward from the same forward outputs (the CUDA forward's, checked above), so
    that both see the same ReLU mask; the references take ReLU's branch where that y did."""
    m = _inputs(g, seed=3)
    tc, tp = _cast(m, dtype, "cuda", g), _cast(m, dtype, "cpu", g)
    if training:
        saved = train_op(tc, g)
    else:
        saved = eval_op(tc, g), None, tc["running_mean"], tc["running_var"]
    saved_cpu = [None if s is None else s.cpu() for s in saved]
    ours, ours_cpu = backward_op(tc, g, *saved, training), backward_op(tp, g, *saved_cpu, training)
    mask = saved[0] > 0
    ref, plain, plain_cpu = reference_grads(m, g, training, mask), reference_grads(tc, g, training, mask), \
        reference_grads(tp, g, training, mask)
    for name in ref:
        _check_three_ways(ours[name], ours_cpu[name], ref[name], plain[name], plain_cpu[name],
                          f"grad_{name} {'train' if training else 'eval'} {g}")


def test_backward_honours_the_gradient_flags():
    g = GEOMETRIES[0]
    t = _cast(_inputs(g, seed=4), torch.float32, "cuda", g)
    y, z, mean, var = train_op(t, g)
    grads = torch.ops.regnet_ext.conv_bn_act_backward(t["grad_y"], y, t["x"], t["weight"], t["bias"], t["gamma"], z,
                                                      mean, var, g.stride, g.padding, g.groups, EPS, g.relu, True,
                                                      False, False)
    assert grads[0].numel() == 0 and grads[1].numel() == 0 and grads[3].numel() == 0
    assert grads[5].shape == y.shape  # the residual's gradient is always returned


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_running_stats_match_batchnorm2d(dtype, momentum):
    """Three training steps: our update from our batch statistics vs nn.BatchNorm2d's own update
    from the same conv outputs."""
    g = Geometry(3, 48, 48, 3, 1, 2, 11, 9, residual=False, relu=True, bias=False, channels_last=True)
    bn = torch.nn.BatchNorm2d(g.c_out, eps=EPS, momentum=momentum).to("cuda", dtype).train()
    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    batches = torch.zeros((), dtype=torch.long, device="cuda")
    count = g.batch * g.out_hw[0] * g.out_hw[1]
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for step in range(3):
        t = _cast(_inputs(g, seed=50 + step), dtype, "cuda", g)
        _, z, mean, var = train_op(t, g)
        bn(z)
        batches += 1
        torch.ops.regnet_ext.conv_bn_act_update_running_stats(running_mean, running_var, mean, var, batches, count,
                                                              MOMENTUM if momentum is None else momentum,
                                                              momentum is None)
        torch.testing.assert_close(running_mean, bn.running_mean, **tol)
        torch.testing.assert_close(running_var, bn.running_var, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_public_function_matches_conv_and_batchnorm_modules(dtype, training):
    """regnet_ext.ops.conv_bn_act through autograd (and the running-statistics update) against
    nn.Conv2d + nn.BatchNorm2d (+ residual, ReLU) on the same GPU, in float32 to float64 terms."""
    from regnet_ext.ops import conv_bn_act

    g = Geometry(2, 96, 96, 3, 2, 4, 13, 11, residual=True, relu=True, bias=False, channels_last=True)
    m = _inputs(g, seed=60)
    conv = torch.nn.Conv2d(g.c_in, g.c_out, 3, g.stride, 1, groups=g.groups, bias=False).double()
    bn = torch.nn.BatchNorm2d(g.c_out, eps=EPS, momentum=MOMENTUM).double()
    with torch.no_grad():
        conv.weight.copy_(m["weight"]), bn.weight.copy_(m["gamma"]), bn.bias.copy_(m["beta"])
        bn.running_mean.copy_(m["running_mean"]), bn.running_var.copy_(m["running_var"])
    bn.train(training)

    t = _cast(m, dtype, "cuda", g)
    leaves = {k: t[k].clone().requires_grad_(True) for k in ("x", "weight", "gamma", "beta", "residual")}
    running_mean, running_var = t["running_mean"].clone(), t["running_var"].clone()
    batches = torch.zeros((), dtype=torch.long, device="cuda")
    y = conv_bn_act(leaves["x"], leaves["weight"], leaves["gamma"], leaves["beta"], running_mean, running_var,
                    stride=g.stride, groups=g.groups, training=training, momentum=MOMENTUM, eps=EPS,
                    num_batches_tracked=batches, relu=True, residual=leaves["residual"])
    y.backward(t["grad_y"])
    # The reference takes ReLU's branch where ours took it (16-bit y near 0 can fall either side).
    x_ref = m["x"].clone().requires_grad_(True)
    res_ref = m["residual"].clone().requires_grad_(True)
    relu_with_mask(bn(conv(x_ref)) + res_ref, y.detach().cpu() > 0).backward(m["grad_y"])
    tol = dict(atol=2e-4, rtol=2e-4) if dtype == torch.float32 else dict(atol=6e-2, rtol=6e-2)
    for name, ours, ref in (("x", leaves["x"].grad, x_ref.grad), ("weight", leaves["weight"].grad, conv.weight.grad),
                            ("gamma", leaves["gamma"].grad, bn.weight.grad), ("beta", leaves["beta"].grad, bn.bias.grad),
                            ("residual", leaves["residual"].grad, res_ref.grad),
                            ("running_mean", running_mean, bn.running_mean), ("running_var", running_var, bn.running_var)):
        scale = max(ref.abs().max().item(), 1.0)
        torch.testing.assert_close(ours.double().cpu(), ref, atol=tol["atol"] * scale, rtol=tol["rtol"],
                                   msg=lambda s, name=name: f"{name}: {s}")
    assert batches.item() == (1 if training else 0)


def _ran_our_grouped_kernel(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    return out, any("grouped_conv3x3_nhwc_kernel" in e.name for e in prof.events())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_wide_groups_with_much_work_go_to_cudnn(dtype):
    """64 channels per group and 1.85G multiply-adds: cuDNN's conv with our epilogue where cuDNN has
    tensor cores (16-bit, or float32 with TF32 allowed), our kernel otherwise; 8 per group stays
    ours. Every route matches the reference."""
    wide = Geometry(8, 128, 128, 3, 1, 2, 56, 56, residual=True, relu=True, bias=False, channels_last=True)
    narrow = Geometry(8, 128, 128, 3, 1, 16, 56, 56, residual=True, relu=True, bias=False, channels_last=True)
    for g, tf32, expect_ours in ((wide, False, dtype == torch.float32), (wide, True, False), (narrow, True, True)):
        m = _inputs(g, seed=70)
        t = _cast(m, dtype, "cuda", g)
        saved, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, tf32
        try:
            y, ours = _ran_our_grouped_kernel(lambda: eval_op(t, g))
            (_, z, _, _), ours_train = _ran_our_grouped_kernel(lambda: train_op(t, g))
        finally:
            torch.backends.cudnn.allow_tf32 = saved
        assert ours == ours_train == expect_ours, f"{g} {dtype} tf32={tf32}: ours ran: {ours}, {ours_train}"
        if tf32 and dtype == torch.float32:
            continue  # TF32's rounding, not the route, would decide a float64 comparison
        assert_close_to_reference(y, reference(m, g, False), plain_torch=reference(t, g, False), name=f"y {g}")
        z_ref = F.conv2d(m["x"], m["weight"], None, g.stride, g.padding, 1, g.groups)
        assert_close_to_reference(z, z_ref, plain_torch=F.conv2d(t["x"], t["weight"], None, g.stride, g.padding, 1,
                                                                 g.groups), name=f"conv_out {g}")


# ---- squeeze_excite ---------------------------------------------------------------------------

SE_SHAPES = [(2, 32, 8, 5, 7, True), (3, 24, 6, 4, 4, False), (4, 368, 92, 14, 14, True),
             (2, 1512, 378, 7, 7, True), (1, 56, 14, 1, 1, True), (5, 200, 50, 9, 3, False)]


def _se_inputs(batch, channels, hidden, h, w, seed):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale

    return {"x": rand(batch, channels, h, w) + 0.3, "w1": rand(hidden, channels, scale=channels ** -0.5),
            "b1": rand(hidden, scale=0.2), "w2": rand(channels, hidden, scale=hidden ** -0.5),
            "b2": rand(channels, scale=0.2), "grad_y": rand(batch, channels, h, w)}


def se_reference(x, w1, b1, w2, b2):
    s = x.mean((2, 3))
    g = torch.sigmoid(F.relu(s @ w1.t() + b1) @ w2.t() + b2)
    return x * g[:, :, None, None]


SE_ARGS = ("x", "w1", "b1", "w2", "b2")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SE_SHAPES, ids=lambda s: "N{}_C{}_h{}_{}x{}_{}".format(*s[:5], "nhwc" if s[5] else "nchw"))
def test_squeeze_excite_forward_and_backward(shape, dtype):
    *dims, channels_last = shape
    m = _se_inputs(*dims, seed=6)
    tc = {k: _to(v, dtype, "cuda", channels_last) for k, v in m.items()}
    tp = {k: _to(v, dtype, "cpu", channels_last) for k, v in m.items()}
    y = torch.ops.regnet_ext.squeeze_excite(*[tc[k] for k in SE_ARGS])
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    _check_three_ways(y, torch.ops.regnet_ext.squeeze_excite(*[tp[k] for k in SE_ARGS]),
                      se_reference(*[m[k] for k in SE_ARGS]), se_reference(*[tc[k] for k in SE_ARGS]),
                      se_reference(*[tp[k] for k in SE_ARGS]), f"squeeze_excite y {shape}")

    def autograd(t):
        leaves = [t[k].detach().clone().requires_grad_(True) for k in SE_ARGS]
        se_reference(*leaves).backward(t["grad_y"])
        return [leaf.grad for leaf in leaves]

    ours = torch.ops.regnet_ext.squeeze_excite_backward(tc["grad_y"], *[tc[k] for k in SE_ARGS])
    ours_cpu = torch.ops.regnet_ext.squeeze_excite_backward(tp["grad_y"], *[tp[k] for k in SE_ARGS])
    for name, a, b, r, p, pc in zip(SE_ARGS, ours, ours_cpu, autograd(m), autograd(tc), autograd(tp)):
        _check_three_ways(a, b, r, p, pc, f"squeeze_excite grad_{name} {shape}")


# ---- bad input --------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    g = GEOMETRIES[0]
    t = _cast(_inputs(g, seed=7), torch.float32, "cuda", g)
    with pytest.raises(RuntimeError, match="weight"):
        eval_op({**t, "weight": t["weight"].cpu()}, g)
    with pytest.raises(RuntimeError, match="float64"):
        eval_op({k: (v.double() if v is not None else None) for k, v in t.items()}, g)
    with pytest.raises(RuntimeError, match="w1"):
        torch.ops.regnet_ext.squeeze_excite(torch.randn(2, 8, 3, 3, device="cuda"), torch.randn(2, 8),
                                            torch.randn(2, device="cuda"), torch.randn(8, 2, device="cuda"),
                                            torch.randn(8, device="cuda"))


# ---- opcheck, torch.compile, CUDA graphs, streams ---------------------------------------------

def _opcheck_cases():
    g = Geometry(2, 48, 48, 3, 2, 2, 9, 10, residual=True, relu=True, bias=True, channels_last=True)
    t = _cast(_inputs(g, seed=8), torch.float32, "cuda", g)
    y, z, mean, var = train_op(t, g)
    se = {k: _to(v, torch.float32, "cuda", True) for k, v in _se_inputs(2, 48, 12, 5, 5, seed=9).items()}
    ops = torch.ops.regnet_ext
    conv = (g.stride, g.padding, g.groups, EPS, g.relu)
    return {
        "conv_bn_act_eval": (ops.conv_bn_act_eval.default,
                             (t["x"], t["weight"], t["bias"], t["gamma"], t["beta"], t["running_mean"],
                              t["running_var"], t["residual"], *conv)),
        "conv_bn_act_train": (ops.conv_bn_act_train.default,
                              (t["x"], t["weight"], t["bias"], t["gamma"], t["beta"], t["residual"], *conv)),
        "conv_bn_act_backward": (ops.conv_bn_act_backward.default,
                                 (t["grad_y"], y, t["x"], t["weight"], t["bias"], t["gamma"], z, mean, var,
                                  *conv, True, True, True)),
        "conv_bn_act_update_running_stats": (ops.conv_bn_act_update_running_stats.default,
                                             (t["running_mean"].float().clone(), t["running_var"].float().clone(),
                                              mean, var, None, 2 * 25, MOMENTUM, False)),
        "squeeze_excite": (ops.squeeze_excite.default, tuple(se[k] for k in SE_ARGS)),
        "squeeze_excite_backward": (ops.squeeze_excite_backward.default,
                                    (se["grad_y"], *[se[k] for k in SE_ARGS])),
    }


@pytest.mark.parametrize("name", ["conv_bn_act_eval", "conv_bn_act_train", "conv_bn_act_backward",
                                  "conv_bn_act_update_running_stats", "squeeze_excite", "squeeze_excite_backward"])
@pytest.mark.parametrize("requires_grad", [False, True], ids=["plain", "requires_grad"])
def test_opcheck_on_cuda(name, requires_grad):
    op, args = _opcheck_cases()[name]
    differentiable = {"conv_bn_act_eval": (0, 1, 2, 3, 4, 7), "conv_bn_act_train": (0, 1, 2, 3, 4, 5),
                      "squeeze_excite": (0, 1, 2, 3, 4)}
    if requires_grad:
        if name not in differentiable:
            pytest.skip("backward and mutating operators take no gradients")
        args = tuple(a.detach().requires_grad_(True) if i in differentiable[name] else a for i, a in enumerate(args))
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_matches_eager():
    g = Geometry(2, 48, 48, 3, 1, 2, 12, 12, residual=True, relu=True, bias=False, channels_last=True)
    t = _cast(_inputs(g, seed=10), torch.bfloat16, "cuda", g)
    se = {k: _to(v, torch.bfloat16, "cuda", True) for k, v in _se_inputs(2, 48, 12, 12, 12, seed=11).items()}

    def block(x):
        y = torch.ops.regnet_ext.conv_bn_act_eval(x, t["weight"], None, t["gamma"], t["beta"], t["running_mean"],
                                                  t["running_var"], t["residual"], 1, 1, 2, EPS, True)
        return torch.ops.regnet_ext.squeeze_excite(y, se["w1"], se["b1"], se["w2"], se["b2"])

    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(t["x"]), block(t["x"]), atol=0, rtol=0)


def test_cuda_graph_capture_and_replay():
    """Capture fails on any host-device synchronisation, so this also checks there is none."""
    g = Geometry(2, 48, 48, 3, 2, 2, 10, 10, residual=False, relu=True, bias=False, channels_last=True)
    t = _cast(_inputs(g, seed=12), torch.float16, "cuda", g)
    se = {k: _to(v, torch.float16, "cuda", True) for k, v in _se_inputs(2, 48, 12, 5, 5, seed=13).items()}
    static_x = t["x"].clone()

    def step(x):
        y_eval = eval_op({**t, "x": x}, g)
        y, z, mean, var = train_op({**t, "x": x}, g)
        grads = backward_op({**t, "x": x}, g, y, z, mean, var, True)
        s = torch.ops.regnet_ext.squeeze_excite(y, se["w1"], se["b1"], se["w2"], se["b2"])
        ds = torch.ops.regnet_ext.squeeze_excite_backward(s, y, se["w1"], se["b1"], se["w2"], se["b2"])
        return [y_eval, y, grads["x"], grads["weight"], s, ds[0], ds[1]]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph (cuBLAS handles, workspaces)
        step(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step(static_x)
    fresh = _cast(_inputs(g, seed=14), torch.float16, "cuda", g)["x"]
    static_x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    # cuDNN's weight-gradient algorithms may sum in a different order run to run: near, not equal.
    for got, want in zip(outs, step(fresh)):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


def test_non_default_stream():
    g = GEOMETRIES[1]
    m = _inputs(g, seed=15)
    expected = eval_op(_cast(m, torch.float32, "cuda", g), g)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        t = _cast(m, torch.float32, "cuda", g)
        torch.cuda._sleep(10_000_000)  # keeps the stream busy: a kernel on the wrong stream would race ahead
        y = eval_op(t, g)
        y_train = train_op(t, g)[0]
        s = torch.ops.regnet_ext.squeeze_excite(y, *[_to(v, torch.float32, "cuda", g.channels_last) for v in
                                                     (torch.full((4, g.c_out), 0.1, dtype=torch.float64),
                                                      torch.zeros(4, dtype=torch.float64),
                                                      torch.full((g.c_out, 4), 0.1, dtype=torch.float64),
                                                      torch.zeros(g.c_out, dtype=torch.float64))])
    stream.synchronize()
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
    assert torch.isfinite(y_train).all() and torch.isfinite(s).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_on_the_tensors_device_not_the_current_one():
    g = GEOMETRIES[0]
    m = _inputs(g, seed=16)
    expected = eval_op(_cast(m, torch.float32, "cuda:0", g), g).cpu()
    with torch.cuda.device(0):
        y = eval_op(_cast(m, torch.float32, "cuda:1", g), g)
    assert y.device == torch.device("cuda:1")
    torch.testing.assert_close(y.cpu(), expected, atol=1e-5, rtol=1e-5)


def test_selfcheck_passes_on_cuda():
    from regnet_ext import selfcheck

    failed = [r for r in selfcheck.run("cuda") if not r.passed]
    assert not failed, failed
