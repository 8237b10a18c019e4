"""Runs every regnet_ext operator on a device against stock PyTorch on random inputs.

For each operator and dtype the result is compared with a float64 reference computed by stock
PyTorch on the CPU. The tolerance follows the project's rule (tests/tolerances.py): a small
multiple of *stock PyTorch's own* error at that dtype on the same device, plus a floor of a few
units in the last place scaled by the result's magnitude. So a pass means "no worse than stock
PyTorch here", and a fail means the kernels misbehave on this device. Two rules keep that true:
float32 is checked with TF32 off (cuDNN's float32 default, for stock and for the convolutions our
operators hand to cuDNN), and backward references take ReLU's branch where the tested y took it.

    from regnet_ext import selfcheck
    results = selfcheck.run("cuda")            # list of CheckResult
    assert all(r.passed for r in results)

The command line is `regnet-ext selfcheck [--device cuda] [--json]`.
"""
import dataclasses
import math

import torch
import torch.nn.functional as F

from . import _extension
from .tolerances import ERROR_MULTIPLE, FLOOR_ULPS, ULP_AT_ONE, full_float32, max_error, relu_with_mask

# Error floor relative to the result's magnitude: a few ulps at 1.0 for 16-bit types (the shared
# rule), the project's fixed tolerance for float32, next to nothing for float64.
_FLOOR = {torch.float64: 1e-9, torch.float32: 2e-4,
          **{dtype: FLOOR_ULPS * ulp for dtype, ulp in ULP_AT_ONE.items()}}
EPS = 1e-5
MOMENTUM = 0.1


@dataclasses.dataclass
class CheckResult:
    op: str
    dtype: str
    passed: bool
    max_error: float
    tolerance: float
    detail: str = ""

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ConvCase:
    """One conv_bn_act geometry; together the cases reach every implementation path."""
    name: str
    c_in: int
    c_out: int
    kernel: int
    stride: int
    groups: int
    size: int
    residual: bool
    relu: bool
    bias: bool = False
    channels_last: bool = True

    @property
    def padding(self):
        return self.kernel // 2


CONV_CASES = (
    ConvCase("grouped3x3_gw8", 32, 32, 3, 1, 4, 9, residual=False, relu=True),
    ConvCase("grouped3x3_gw24_s2_residual", 48, 48, 3, 2, 2, 10, residual=True, relu=True),
    ConvCase("conv1x1_residual", 24, 40, 1, 1, 1, 7, residual=True, relu=True),
    ConvCase("conv1x1_s2_bias", 24, 40, 1, 2, 1, 8, residual=False, relu=False, bias=True),
    ConvCase("stem3x3_s2_nchw", 3, 16, 3, 2, 1, 11, residual=False, relu=True, channels_last=False),
)
SE_CASES = ((2, 32, 8, 5, True), (3, 24, 6, 4, False))  # (batch, channels, hidden, size, channels_last)


def default_dtypes(device):
    return [torch.float32, torch.float16, torch.bfloat16] if torch.device(device).type == "cuda" else \
        [torch.float32, torch.bfloat16]


def _tolerance(reference, plain, dtype):
    scale = max(reference.detach().abs().max().item(), 1.0) if reference.numel() else 1.0
    return ERROR_MULTIPLE * max_error(plain, reference) + _FLOOR[dtype] * scale


class _Worst:
    """Keeps the comparison with the largest error-to-tolerance ratio."""

    def __init__(self):
        self.ratio, self.error, self.tolerance, self.detail = -1.0, 0.0, 0.0, ""

    def add(self, name, actual, reference, plain, dtype):
        if actual.shape != reference.shape:
            raise RuntimeError(f"{name}: shape {tuple(actual.shape)} != reference {tuple(reference.shape)}")
        err, tol = max_error(actual, reference), _tolerance(reference, plain, dtype)
        ratio = err / tol if tol > 0 else (0.0 if err == 0 else math.inf)
        if math.isnan(err):
            ratio = math.inf
        if ratio > self.ratio:
            self.ratio, self.error, self.tolerance, self.detail = ratio, err, tol, name

    def result(self, op, dtype):
        return CheckResult(op, str(dtype).replace("torch.", ""), self.ratio <= 1.0, self.error, self.tolerance,
                           self.detail)


# ---- stock PyTorch references -----------------------------------------------------------------

def reference_conv_bn_act(x, weight, bias, gamma, beta, running_mean, running_var, residual, case, training,
                          relu_mask=None):
    z = F.conv2d(x, weight, bias, case.stride, case.padding, 1, case.groups)
    y = F.batch_norm(z, running_mean, running_var, gamma, beta, training, MOMENTUM, EPS)
    if residual is not None:
        y = y + residual
    return relu_with_mask(y, relu_mask) if case.relu else y


def reference_squeeze_excite(x, w1, b1, w2, b2):
    s = x.mean((2, 3))
    z = F.relu(s @ w1.t() + b1)
    g = torch.sigmoid(z @ w2.t() + b2)
    return x * g[:, :, None, None]


# ---- inputs -----------------------------------------------------------------------------------

def _conv_inputs(case, gen):
    """Float64 CPU master copies; each check casts them to (dtype, device)."""
    def rand(*shape, low=-1.0, high=1.0):
        return torch.rand(*shape, generator=gen, dtype=torch.float64) * (high - low) + low

    out = (case.size + 2 * case.padding - case.kernel) // case.stride + 1
    fan_in = case.c_in // case.groups * case.kernel * case.kernel
    t = {
        "x": rand(2, case.c_in, case.size, case.size),
        "weight": rand(case.c_out, case.c_in // case.groups, case.kernel, case.kernel) / math.sqrt(fan_in),
        "bias": rand(case.c_out) if case.bias else None,
        "gamma": rand(case.c_out, low=0.5, high=1.5),
        "beta": rand(case.c_out, low=-0.5, high=0.5),
        "running_mean": rand(case.c_out, low=-0.2, high=0.2),
        "running_var": rand(case.c_out, low=0.5, high=1.5),
        "residual": rand(2, case.c_out, out, out) if case.residual else None,
        "grad_y": rand(2, case.c_out, out, out),
    }
    return t


def _on(t, dtype, device, channels_last=False):
    if t is None:
        return None
    t = t.to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def _cast_all(master, dtype, device, case):
    return {k: _on(v, dtype, device, case.channels_last) for k, v in master.items()}


# ---- checks -----------------------------------------------------------------------------------

def _check_conv_eval(dtype, device, gen):
    worst = _Worst()
    ops = torch.ops.regnet_ext
    for case in CONV_CASES:
        m = _conv_inputs(case, gen)
        t = _cast_all(m, dtype, device, case)
        ours = ops.conv_bn_act_eval(t["x"], t["weight"], t["bias"], t["gamma"], t["beta"], t["running_mean"],
                                    t["running_var"], t["residual"], case.stride, case.padding, case.groups, EPS,
                                    case.relu)
        ref = reference_conv_bn_act(m["x"], m["weight"], m["bias"], m["gamma"], m["beta"], m["running_mean"],
                                    m["running_var"], m["residual"], case, training=False)
        plain = reference_conv_bn_act(t["x"], t["weight"], t["bias"], t["gamma"], t["beta"], t["running_mean"],
                                      t["running_var"], t["residual"], case, training=False)
        worst.add(f"{case.name}: y", ours, ref, plain, dtype)
    return worst


def _check_conv_train(dtype, device, gen):
    worst = _Worst()
    ops = torch.ops.regnet_ext
    for case in CONV_CASES:
        m = _conv_inputs(case, gen)
        t = _cast_all(m, dtype, device, case)
        y, z, mean, var = ops.conv_bn_act_train(t["x"], t["weight"], t["bias"], t["gamma"], t["beta"], t["residual"],
                                                case.stride, case.padding, case.groups, EPS, case.relu)
        ref = reference_conv_bn_act(m["x"], m["weight"], m["bias"], m["gamma"], m["beta"], None, None, m["residual"],
                                    case, training=True)
        plain = reference_conv_bn_act(t["x"], t["weight"], t["bias"], t["gamma"], t["beta"], None, None,
                                      t["residual"], case, training=True)
        worst.add(f"{case.name}: y", y, ref, plain, dtype)
        z_ref = F.conv2d(m["x"], m["weight"], m["bias"], case.stride, case.padding, 1, case.groups)
        z_plain = F.conv2d(t["x"], t["weight"], t["bias"], case.stride, case.padding, 1, case.groups)
        worst.add(f"{case.name}: conv_out", z, z_ref, z_plain, dtype)
        worst.add(f"{case.name}: mean", mean, z_ref.mean((0, 2, 3)), z_plain.float().mean((0, 2, 3)), dtype)
        worst.add(f"{case.name}: var", var, z_ref.var((0, 2, 3), unbiased=False),
                  z_plain.float().var((0, 2, 3), unbiased=False), dtype)
    return worst


def _check_running_stats(dtype, device, gen):
    worst = _Worst()
    channels, count = 24, 50
    for cumulative in (False, True):
        rm0 = torch.rand(channels, generator=gen, dtype=torch.float64) - 0.5
        rv0 = torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5
        bm = torch.rand(channels, generator=gen, dtype=torch.float64) - 0.5
        bv = torch.rand(channels, generator=gen, dtype=torch.float64) + 0.2
        batches = 3
        factor = 1.0 / batches if cumulative else MOMENTUM
        ref_m = (1 - factor) * rm0 + factor * bm
        ref_v = (1 - factor) * rv0 + factor * bv * count / (count - 1)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        # Copies: the operator updates them in place, and rm0, rv0 (float64) serve the plain update below.
        rm, rv = rm0.to(device, dtype, copy=True), rv0.to(device, dtype, copy=True)
        nbt = torch.tensor(batches, dtype=torch.long, device=device) if cumulative else None
        torch.ops.regnet_ext.conv_bn_act_update_running_stats(rm, rv, bm.to(device, acc), bv.to(device, acc), nbt,
                                                              count, MOMENTUM, cumulative)
        # Stock PyTorch's update in this dtype: what nn.BatchNorm2d's buffers would hold.
        plain_m = ((1 - factor) * rm0.to(device, dtype) + factor * bm.to(device, dtype)).to(dtype)
        plain_v = ((1 - factor) * rv0.to(device, dtype) + factor * bv.to(device, dtype) * count / (count - 1)).to(dtype)
        mode = "cumulative" if cumulative else "momentum"
        worst.add(f"{mode}: running_mean", rm, ref_m, plain_m, dtype)
        worst.add(f"{mode}: running_var", rv, ref_v, plain_v, dtype)
    return worst


def _autograd_conv(t, case, training, relu_mask):
    leaves = {k: t[k].detach().clone().requires_grad_(True)
              for k in ("x", "weight", "bias", "gamma", "beta", "residual") if t[k] is not None}
    y = reference_conv_bn_act(leaves["x"], leaves["weight"], leaves.get("bias"), leaves["gamma"], leaves["beta"],
                              None if training else t["running_mean"], None if training else t["running_var"],
                              leaves.get("residual"), case, training, relu_mask)
    y.backward(t["grad_y"])
    return {k: v.grad for k, v in leaves.items()}


def _check_conv_backward(dtype, device, gen, training):
    worst = _Worst()
    ops = torch.ops.regnet_ext
    for case in CONV_CASES:
        m = _conv_inputs(case, gen)
        t = _cast_all(m, dtype, device, case)
        if training:
            y, z, mean, var = ops.conv_bn_act_train(t["x"], t["weight"], t["bias"], t["gamma"], t["beta"],
                                                    t["residual"], case.stride, case.padding, case.groups, EPS,
                                                    case.relu)
        else:
            y = ops.conv_bn_act_eval(t["x"], t["weight"], t["bias"], t["gamma"], t["beta"], t["running_mean"],
                                     t["running_var"], t["residual"], case.stride, case.padding, case.groups, EPS,
                                     case.relu)
            z, mean, var = None, t["running_mean"], t["running_var"]
        grads = ops.conv_bn_act_backward(t["grad_y"], y, t["x"], t["weight"], t["bias"], t["gamma"], z, mean, var,
                                         case.stride, case.padding, case.groups, EPS, case.relu, training, True, True)
        ours = dict(zip(("x", "weight", "bias", "gamma", "beta", "residual"), grads))
        # The backward's ReLU branch is the one its input y took: the references take the same.
        ref, plain = _autograd_conv(m, case, training, y > 0), _autograd_conv(t, case, training, y > 0)
        for name, r in ref.items():
            worst.add(f"{case.name}: grad_{name}", ours[name], r, plain[name], dtype)
    return worst


def _module_step(t, case, ours, relu_mask=None):
    """One training step of conv + BN (+ residual) (+ ReLU): through regnet_ext.ops.conv_bn_act
    when `ours`, else through stock nn.Conv2d / nn.BatchNorm2d, taking ReLU's branch where
    `relu_mask` (ours y > 0) says. Returns outputs, grads, buffers."""
    leaves = {k: t[k].detach().clone().requires_grad_(True) for k in ("x", "weight", "gamma", "beta", "residual")
              if t[k] is not None}
    running_mean, running_var = t["running_mean"].clone(), t["running_var"].clone()
    if ours:
        from .ops import conv_bn_act

        y = conv_bn_act(leaves["x"], leaves["weight"], leaves["gamma"], leaves["beta"], running_mean, running_var,
                        stride=case.stride, padding=case.padding, groups=case.groups, training=True,
                        momentum=MOMENTUM, eps=EPS, relu=case.relu, residual=leaves.get("residual"))
    else:
        z = F.conv2d(leaves["x"], leaves["weight"], None, case.stride, case.padding, 1, case.groups)
        y = F.batch_norm(z, running_mean, running_var, leaves["gamma"], leaves["beta"], True, MOMENTUM, EPS)
        y = y + leaves["residual"] if "residual" in leaves else y
        y = relu_with_mask(y, relu_mask) if case.relu else y
    y.backward(t["grad_y"])
    out = {"y": y.detach(), "running_mean": running_mean, "running_var": running_var}
    out.update({f"grad_{k}": v.grad for k, v in leaves.items()})
    return out


def _check_conv_autograd(dtype, device, gen):
    """The public function end to end (autograd, running statistics) against stock modules."""
    worst = _Worst()
    for case in CONV_CASES:
        if case.bias:
            continue
        m = _conv_inputs(case, gen)
        t = _cast_all(m, dtype, device, case)
        ours = _module_step(t, case, True)
        mask = ours["y"] > 0
        ref, plain = _module_step(m, case, False, mask), _module_step(t, case, False, mask)
        for name in ref:
            worst.add(f"{case.name}: {name}", ours[name], ref[name], plain[name], dtype)
    return worst


def _se_inputs(batch, channels, hidden, size, gen):
    def rand(*shape, scale=1.0):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale

    return {"x": rand(batch, channels, size, size) + 0.5, "w1": rand(hidden, channels, scale=channels ** -0.5),
            "b1": rand(hidden, scale=0.1), "w2": rand(channels, hidden, scale=hidden ** -0.5),
            "b2": rand(channels, scale=0.1), "grad_y": rand(batch, channels, size, size)}


def _squeeze_excite_inplace(x, *weights):
    """squeeze_excite_ (fused inference's SE) on a copy of x: the result written over it."""
    x = x.clone(memory_format=torch.preserve_format)
    torch.ops.regnet_ext.squeeze_excite_(x, *weights)
    return x


def _check_se(dtype, device, gen, backward, forward=None):
    """squeeze_excite (or `forward`, an operator computing the same) or its backward."""
    forward = forward or torch.ops.regnet_ext.squeeze_excite  # (bound at run time: run() loads _C)
    worst = _Worst()
    for batch, channels, hidden, size, channels_last in SE_CASES:
        m = _se_inputs(batch, channels, hidden, size, gen)
        t = {k: _on(v, dtype, device, channels_last) for k, v in m.items()}
        name = f"N{batch}_C{channels}_{'nhwc' if channels_last else 'nchw'}"
        args = [t[k] for k in ("x", "w1", "b1", "w2", "b2")]
        if not backward:
            ours = forward(*args)
            ref = reference_squeeze_excite(*[m[k] for k in ("x", "w1", "b1", "w2", "b2")])
            worst.add(f"{name}: y", ours, ref, reference_squeeze_excite(*args), dtype)
            continue
        ours = dict(zip(("x", "w1", "b1", "w2", "b2"), torch.ops.regnet_ext.squeeze_excite_backward(t["grad_y"], *args)))

        def autograd(src):
            leaves = [src[k].detach().clone().requires_grad_(True) for k in ("x", "w1", "b1", "w2", "b2")]
            reference_squeeze_excite(*leaves).backward(src["grad_y"])
            return dict(zip(("x", "w1", "b1", "w2", "b2"), (leaf.grad for leaf in leaves)))

        ref, plain = autograd(m), autograd(t)
        for k in ref:
            worst.add(f"{name}: grad_{k}", ours[k], ref[k], plain[k], dtype)
    return worst


def reference_conv_pair(x, weight_a, bias_a, weight_b, bias_b, stride, groups):
    a = F.relu(F.conv2d(x, weight_a, bias_a))
    return F.relu(F.conv2d(a, weight_b, bias_b, stride=stride, padding=1, groups=groups))


# (batch, in channels, channels, per group, size, stride): one band and several.
PAIR_CASES = [(2, 24, 48, 8, 15, 2), (1, 32, 64, 16, 64, 1)]


def _check_conv_pair(dtype, device, gen):
    worst = _Worst()
    for batch, in_c, channels, per_group, size, stride in PAIR_CASES:
        def rand(*shape, scale=1.0):
            return (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale

        m = [rand(batch, in_c, size, size), rand(channels, in_c, 1, 1, scale=in_c ** -0.5), rand(channels, scale=0.5),
             rand(channels, per_group, 3, 3, scale=(9 * per_group) ** -0.5), rand(channels, scale=0.5)]
        t = [_on(v, dtype, device, channels_last=True) for v in m]
        groups = channels // per_group
        ours = torch.ops.regnet_ext.conv_pair_relu(*t, stride, groups)
        worst.add(f"N{batch}_C{channels}_g{per_group}_s{stride}: y", ours, reference_conv_pair(*m, stride, groups),
                  reference_conv_pair(*t, stride, groups), dtype)
    return worst


# (batch, channels, size, classes): RegNetY-400MF's head at batch 8, and a small odd one.
POOL_LINEAR_CASES = ((8, 440, 7, 1000), (3, 13, 5, 7))


def _pool_linear_inputs(batch, channels, size, classes, gen, dtype, device):
    """x, weight, bias and a grad_y in float64 (m) and in dtype on device (t)."""
    m = [(torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale
         for shape, scale in (((batch, channels, size, size), 1.0), ((classes, channels), channels ** -0.5),
                              ((classes,), 1.0), ((batch, classes), 1.0))]
    return m, [_on(v, dtype, device, channels_last=v.dim() == 4) for v in m]


def _check_pool_linear(dtype, device, gen):
    worst = _Worst()
    for batch, channels, size, classes in POOL_LINEAR_CASES:
        m, t = _pool_linear_inputs(batch, channels, size, classes, gen, dtype, device)
        worst.add(f"N{batch}_C{channels}_{size}px_K{classes}: y", torch.ops.regnet_ext.pool_linear(*t[:3]),
                  F.linear(m[0].mean((2, 3)), m[1], m[2]), F.linear(t[0].mean((2, 3)), t[1], t[2]), dtype)
    return worst


def _check_pool_linear_backward(dtype, device, gen):
    """pool_linear_backward (a fused head in training) against autograd through the stock head."""
    worst = _Worst()
    for batch, channels, size, classes in POOL_LINEAR_CASES:
        m, t = _pool_linear_inputs(batch, channels, size, classes, gen, dtype, device)
        ours = torch.ops.regnet_ext.pool_linear_backward(t[3], t[0], t[1])

        def autograd(src):
            leaves = [v.detach().clone().requires_grad_(True) for v in src[:3]]
            F.linear(leaves[0].mean((2, 3)), leaves[1], leaves[2]).backward(src[3])
            return [leaf.grad for leaf in leaves]

        for name, o, r, p in zip(("grad_x", "grad_weight", "grad_bias"), ours, autograd(m), autograd(t)):
            worst.add(f"N{batch}_C{channels}_{size}px_K{classes}: {name}", o, r, p, dtype)
    return worst


CHECKS = {
    "conv_bn_act_eval": _check_conv_eval,
    "conv_bn_act_train": _check_conv_train,
    "conv_bn_act_update_running_stats": _check_running_stats,
    "conv_bn_act_backward[train]": lambda d, dev, g: _check_conv_backward(d, dev, g, training=True),
    "conv_bn_act_backward[eval]": lambda d, dev, g: _check_conv_backward(d, dev, g, training=False),
    "conv_bn_act[autograd+running_stats]": _check_conv_autograd,
    "squeeze_excite": lambda d, dev, g: _check_se(d, dev, g, backward=False),
    "squeeze_excite_backward": lambda d, dev, g: _check_se(d, dev, g, backward=True),
    "squeeze_excite_": lambda d, dev, g: _check_se(d, dev, g, backward=False, forward=_squeeze_excite_inplace),
    "conv_pair_relu": _check_conv_pair,
    "pool_linear": _check_pool_linear,
    "pool_linear_backward": _check_pool_linear_backward,
}
# Operators that exist for some devices and dtypes only: checked where they run.
APPLIES = {
    "conv_pair_relu": lambda dtype, device: (device.type == "cpu" and dtype == torch.float32
                                             and _extension.compiled_with_narrow_group_kernel()),
    "squeeze_excite_": lambda dtype, device: device.type == "cpu",
    "pool_linear": lambda dtype, device: device.type == "cpu" and dtype in (torch.float32, torch.float64),
    "pool_linear_backward": lambda dtype, device: device.type == "cpu" and dtype in (torch.float32, torch.float64),
}


def run(device="cpu", dtypes=None, seed=0):
    """Checks every operator on `device` for each dtype; returns a list of CheckResult.

    An operator that raises (no kernel for the device, a launch failure, ...) is reported as failed
    with the exception in `detail`, so one broken kernel does not hide the others."""
    _extension.require()
    try:
        device = torch.device(device)
    except RuntimeError:  # torch's message lists some twenty device types and names no argument
        raise RuntimeError(f"device: expected cpu, cuda or cuda:N, got {str(device)!r}") from None
    if device.type not in ("cpu", "cuda"):  # the only devices with regnet_ext kernels
        raise RuntimeError(f"device: regnet_ext has kernels for cpu and cuda, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: CUDA was requested but torch.cuda.is_available() is False")
    results = []
    for dtype in dtypes or default_dtypes(device):
        for op, check in CHECKS.items():
            if op in APPLIES and not APPLIES[op](dtype, device):
                continue
            gen = torch.Generator().manual_seed(seed)
            try:
                with full_float32():  # float32 means float32 here, not cuDNN's default TF32
                    worst = check(dtype, device, gen)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # surface asynchronous kernel errors on this operator
                results.append(worst.result(op, dtype))
            except Exception as exc:  # noqa: BLE001 -- reported per operator, never swallowed silently
                results.append(CheckResult(op, str(dtype).replace("torch.", ""), False, math.nan, math.nan,
                                           f"{type(exc).__name__}: {exc}".splitlines()[0][:300]))
    return results


def all_passed(results):
    return bool(results) and all(r.passed for r in results)
