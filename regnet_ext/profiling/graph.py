"""The operator graph of a RegNet pass: which tensors each operator reads and writes, and their
sizes. A pure function of an AnyNetSpec, a batch size and a resolution (no model is built).

Inference graphs hold the forward operators with eval-mode BN. Training graphs split BN into
batch statistics and their application, and append the backward operators that autograd runs,
derived operator by operator, with the gradient accumulations that tensors with several
consumers need. Operator ``role``s ("a.conv", "se.pool", "b.relu.bwd", ...) are what schedules
(schedules.py) match to decide which operators share a kernel.
"""
from dataclasses import dataclass, field

from ..models.complexity import output_size
from ..models.spec import AnyNetSpec

# Tensor kinds: a feature map (what "activation passes" count), a small per-sample or per-channel
# vector (pooled features, gates, BN statistics, logits), parameters and their gradients.
TENSOR_KINDS = ("act", "vec", "param", "grad_param")
IMAGE, LOGITS = "image", "logits"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    numel: int
    kind: str


@dataclass(frozen=True)
class OpNode:
    name: str  # unique: "<unit>/<role>"
    unit: str  # "stem", "s2.b1", "head"
    role: str  # what schedule rules match
    kind: str  # conv, bn, bn_stats, bn_apply, relu, pool, se_mlp, scale, add, linear, grad, ...
    inputs: tuple
    outputs: tuple
    macs: int = 0  # multiply-adds (pycls's "flops")
    phase: str = "forward"
    # A reduction's output needs all of its input: no consumer of it may share its kernel.
    reduction: bool = False


@dataclass
class OpGraph:
    """Operators in execution order, the tensors they touch, and the graph's outputs."""

    ops: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)
    outputs: tuple = ()
    units: list = field(default_factory=list)  # (unit, stage name) in execution order
    training: bool = False
    batch: int = 1
    resolution: tuple = (224, 224)

    def producer(self):
        return {t: op for op in self.ops for t in op.outputs}

    def consumers(self):
        out = {}
        for op in self.ops:
            for t in op.inputs:
                out.setdefault(t, []).append(op)
        return out


class _Builder:
    def __init__(self, graph, batch):
        self.g, self.n = graph, batch

    def tensor(self, name, numel, kind):
        if name in self.g.tensors:
            raise AssertionError(f"tensor {name} defined twice")
        self.g.tensors[name] = TensorInfo(name, int(numel), kind)
        return name

    def op(self, unit, role, kind, inputs, outputs, macs=0, reduction=False):
        self.g.ops.append(OpNode(f"{unit}/{role}", unit, role, kind, tuple(inputs),
                                 tuple(outputs), int(macs), "forward", reduction))

    def conv_norm(self, unit, role, x, c_in, c_out, k, stride, groups, hw, relu):
        """conv -> BN (eval, or statistics + apply in training) -> optional ReLU."""
        ho, wo = output_size(*hw, stride)
        act = self.n * c_out * ho * wo
        weight = self.tensor(f"{unit}/{role}.conv.weight", k * k * c_in * c_out // groups, "param")
        y = self.tensor(f"{unit}/{role}.conv.out", act, "act")
        self.op(unit, f"{role}.conv", "conv", (x, weight), (y,),
                macs=self.n * k * k * c_in * c_out * ho * wo // groups)
        if self.g.training:
            params = self.tensor(f"{unit}/{role}.bn.affine", 2 * c_out, "param")
            stats = self.tensor(f"{unit}/{role}.bn.stats", 2 * c_out, "vec")
            self.op(unit, f"{role}.bn_stats", "bn_stats", (y,), (stats,), reduction=True)
            z = self.tensor(f"{unit}/{role}.bn.out", act, "act")
            self.op(unit, f"{role}.bn_apply", "bn_apply", (y, stats, params), (z,))
        else:  # running statistics and affine: 4 per channel
            params = self.tensor(f"{unit}/{role}.bn.params", 4 * c_out, "param")
            z = self.tensor(f"{unit}/{role}.bn.out", act, "act")
            self.op(unit, f"{role}.bn", "bn", (y, params), (z,))
        if relu:
            r = self.tensor(f"{unit}/{role}.relu.out", act, "act")
            self.op(unit, f"{role}.relu", "relu", (z,), (r,))
            z = r
        return z, (ho, wo)

    def block(self, unit, b, x, hw):
        inner = b.inner_width
        a, _ = self.conv_norm(unit, "a", x, b.w_in, inner, 1, 1, 1, hw, relu=True)
        y, ohw = self.conv_norm(unit, "b", a, inner, inner, 3, b.stride, b.groups, hw, relu=True)
        act = self.n * inner * ohw[0] * ohw[1]
        if b.se_width:
            w_se = b.se_width
            pooled = self.tensor(f"{unit}/se.pool.out", self.n * inner, "vec")
            self.op(unit, "se.pool", "pool", (y,), (pooled,), reduction=True)
            mlp = self.tensor(f"{unit}/se.mlp.params", 2 * inner * w_se + w_se + inner, "param")
            gate = self.tensor(f"{unit}/se.gate", self.n * inner, "vec")
            self.op(unit, "se.mlp", "se_mlp", (pooled, mlp), (gate,),
                    macs=self.n * (2 * inner * w_se + w_se + inner))
            scaled = self.tensor(f"{unit}/se.scale.out", act, "act")
            self.op(unit, "se.scale", "scale", (y, gate), (scaled,))
            y = scaled
        c, ohw = self.conv_norm(unit, "c", y, inner, b.w_out, 1, 1, 1, ohw, relu=False)
        shortcut = x
        if b.has_projection:
            shortcut, _ = self.conv_norm(unit, "proj", x, b.w_in, b.w_out, 1, b.stride, 1, hw,
                                         relu=False)
        act = self.n * b.w_out * ohw[0] * ohw[1]
        s = self.tensor(f"{unit}/add.out", act, "act")
        self.op(unit, "add", "add", (c, shortcut), (s,))
        out = self.tensor(f"{unit}/out.relu.out", act, "act")
        self.op(unit, "out.relu", "relu", (s,), (out,))
        return out, ohw


def _resolution(resolution):
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        resolution = (resolution, resolution)
    if (not isinstance(resolution, (tuple, list)) or len(resolution) != 2
            or not all(isinstance(v, int) and v >= 1 for v in resolution)):
        raise ValueError(f"resolution: expected a positive int or an (h, w) pair, got {resolution!r}")
    return tuple(resolution)


def build_graph(spec, batch, resolution=224, *, training=False):
    """The OpGraph of a whole AnyNet/RegNet (stem, every block, head) for ``batch`` images.

    With ``training=True`` the graph holds the training forward (BN batch statistics) followed by
    the backward pass, starting from the gradient of the logits."""
    if not isinstance(spec, AnyNetSpec):
        raise TypeError(f"spec: expected an AnyNetSpec, got {type(spec).__name__}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    h, w = _resolution(resolution)
    graph = OpGraph(training=bool(training), batch=batch, resolution=(h, w))
    bld = _Builder(graph, batch)
    x = bld.tensor(IMAGE, batch * spec.in_channels * h * w, "act")
    graph.units.append(("stem", "stem"))
    x, hw = bld.conv_norm("stem", "stem", x, spec.in_channels, spec.stem_width, 3, 2, 1, (h, w),
                          relu=True)
    for b in spec.blocks():
        unit = f"s{b.stage + 1}.b{b.index + 1}"
        graph.units.append((unit, f"s{b.stage + 1}"))
        x, hw = bld.block(unit, b, x, hw)
    graph.units.append(("head", "head"))
    c = spec.widths[-1]
    pooled = bld.tensor("head/pool.out", batch * c, "vec")
    bld.op("head", "head.pool", "pool", (x,), (pooled,), reduction=True)
    fc = bld.tensor("head/fc.params", c * spec.num_classes + spec.num_classes, "param")
    logits = bld.tensor(LOGITS, batch * spec.num_classes, "vec")
    bld.op("head", "head.fc", "linear", (pooled, fc), (logits,),
           macs=batch * (c * spec.num_classes + spec.num_classes))
    graph.outputs = (logits,)
    if training:
        _append_backward(graph)
    return graph


def block_graph(block_spec, batch, resolution, *, training=False):
    """The OpGraph of one block alone; ``resolution`` is the block's input size. Its input is
    read from outside and its output is the graph's output (training: gradient given)."""
    h, w = _resolution(resolution)
    graph = OpGraph(training=bool(training), batch=batch, resolution=(h, w))
    bld = _Builder(graph, batch)
    x = bld.tensor("block.in", batch * block_spec.w_in * h * w, "act")
    graph.units.append(("block", "block"))
    out, _ = bld.block("block", block_spec, x, (h, w))
    graph.outputs = (out,)
    if training:
        _append_backward(graph)
    return graph


def grad_name(tensor):
    return f"grad:{tensor}"


def _append_backward(graph):
    """Appends autograd's backward operators, in the order autograd runs them."""
    forward = list(graph.ops)
    producer = graph.producer()
    contributions = {}  # tensor -> [(gradient tensor, unit of the consumer that produced it)]
    for out in graph.outputs:  # the loss's gradient arrives from outside
        info = graph.tensors[out]
        g = grad_name(out)
        graph.tensors[g] = TensorInfo(g, info.numel, info.kind)
        contributions[out] = [(g, producer[out].unit)]

    def new(name, like, kind=None):
        info = graph.tensors[like]
        graph.tensors[name] = TensorInfo(name, info.numel, kind or info.kind)
        return name

    def emit(fwd, suffix, kind, inputs, outputs, macs=0, reduction=False):
        graph.ops.append(OpNode(f"{fwd.unit}/{fwd.role}.{suffix}", fwd.unit,
                                f"{fwd.role}.{suffix}", kind, tuple(inputs), tuple(outputs),
                                int(macs), "backward", reduction))

    def gradient(fwd, t):
        """The complete gradient of ``t`` (``fwd`` produced it; None for a graph input); sums
        the contributions of several consumers the way autograd does (one accumulation per
        extra contribution), newest first so that a schedule can put the sum in the epilogue of
        the kernel that produced the newest one."""
        parts = contributions.pop(t, [])
        if not parts:
            return None
        g, unit = parts[-1]
        for i, (other, _) in enumerate(reversed(parts[:-1])):
            acc = new(f"{grad_name(t)}~{i + 1}", t)
            # The sum belongs to the unit whose backward completes it: the earliest consumer's.
            role = fwd.role if fwd is not None and fwd.unit == unit else "in"
            graph.ops.append(OpNode(f"{unit}/{role}.grad_accum#{t}~{i + 1}", unit,
                                    f"{role}.grad_accum", "grad_accum", (g, other), (acc,), 0,
                                    "backward", False))
            g = acc
        return g

    def give(t, g, unit):
        contributions.setdefault(t, []).append((g, unit))

    for op in reversed(forward):
        if op.kind == "bn_stats":
            continue  # its gradient is part of bn_apply's backward
        (out,) = op.outputs  # every forward operator has one output
        gy = gradient(op, out)
        if gy is None:
            continue
        x = op.inputs[0]
        needs_x = x != IMAGE  # the image needs no gradient
        if op.kind == "conv":
            weight = op.inputs[1]
            if needs_x:
                gx = new(grad_name(x) + f"@{op.name}", x)
                emit(op, "bwd_data", "conv_bwd_data", (gy, weight), (gx,), op.macs)
                give(x, gx, op.unit)
            gw = new(grad_name(weight), weight, "grad_param")
            emit(op, "bwd_weight", "conv_bwd_weight", (gy, x), (gw,), op.macs, reduction=True)
        elif op.kind == "bn_apply":
            _, stats, params = op.inputs
            gp = new(grad_name(params), params, "grad_param")
            emit(op, "bwd_reduce", "bn_bwd_reduce", (gy, x, stats), (gp,), reduction=True)
            gx = new(grad_name(x) + f"@{op.name}", x)
            emit(op, "bwd", "bn_bwd", (gy, x, stats, gp, params), (gx,))
            give(x, gx, op.unit)
        elif op.kind == "relu":
            gx = new(grad_name(x) + f"@{op.name}", x)
            emit(op, "bwd", "relu_bwd", (gy, out), (gx,))
            give(x, gx, op.unit)
        elif op.kind == "add":  # the gradient flows to both inputs unchanged
            for t in op.inputs:
                give(t, gy, op.unit)
        elif op.kind == "scale":
            gate = op.inputs[1]
            gx = new(grad_name(x) + f"@{op.name}", x)
            emit(op, "bwd_x", "scale_bwd_x", (gy, gate), (gx,))
            gg = new(grad_name(gate), gate)
            emit(op, "bwd_gate", "scale_bwd_gate", (gy, x), (gg,), reduction=True)
            give(x, gx, op.unit)
            give(gate, gg, op.unit)
        elif op.kind == "pool":
            gx = new(grad_name(x) + f"@{op.name}", x)
            emit(op, "bwd", "pool_bwd", (gy,), (gx,))
            give(x, gx, op.unit)
        elif op.kind in ("se_mlp", "linear"):
            params = op.inputs[1]
            gx = new(grad_name(x) + f"@{op.name}", x)
            gp = new(grad_name(params), params, "grad_param")
            emit(op, "bwd", f"{op.kind}_bwd", (gy, x, params, out), (gx, gp), 2 * op.macs)
            give(x, gx, op.unit)
        else:
            raise AssertionError(f"no backward rule for operator kind {op.kind!r}")
    # Graph inputs that need a gradient (a lone block's input) hand it back to the caller.
    for t in [t for t in contributions if graph.tensors[t].kind == "act"]:
        graph.outputs += (gradient(None, t),)
