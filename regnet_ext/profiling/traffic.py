"""The bytes each schedule moves: an analytic traffic model of a RegNet pass.

``model_traffic(spec_or_model, batch, resolution, schedule=..., training=...)`` builds the
operator graph (graph.py), splits it into the kernels a schedule launches (schedules.py) and
counts, per kernel, the bytes read and written (activations, parameters, small vectors) and the
multiply-adds. Summaries group kernels per operator, per unit (stem, block, head) and per stage,
and give the roofline time they imply on a device (roofline.py).

An *activation pass* is one read or one write of a feature map; for an identity block every
feature map has the block's size, so passes are DESIGN.md section 5's unit.
"""
from dataclasses import dataclass

import torch

from ..models.spec import AnyNetSpec, BlockSpec
from .graph import block_graph, build_graph
from .schedules import build_kernels, get_schedule

PHASES = ("forward", "backward")


def _itemsize(dtype):
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return torch.empty((), dtype=dtype).element_size()
    if isinstance(dtype, str) and hasattr(torch, dtype) and isinstance(getattr(torch, dtype),
                                                                     torch.dtype):
        return _itemsize(getattr(torch, dtype))
    raise ValueError(f"dtype: expected a floating torch.dtype or its name (e.g. 'bfloat16'), "
                     f"got {dtype!r}")


@dataclass(frozen=True)
class TrafficSummary:
    """Totals over a set of kernels. flops = 2 x multiply-adds."""

    kernels: int
    passes: int  # activation reads + writes
    activation_bytes: int
    other_bytes: int  # parameters, their gradients, pooled vectors, statistics
    macs: int

    @property
    def bytes(self):
        return self.activation_bytes + self.other_bytes

    @property
    def flops(self):
        return 2 * self.macs

    def __add__(self, other):
        return TrafficSummary(*(a + b for a, b in zip(
            (self.kernels, self.passes, self.activation_bytes, self.other_bytes, self.macs),
            (other.kernels, other.passes, other.activation_bytes, other.other_bytes, other.macs))))

    def roofline_seconds(self, ceiling):
        """Lower bound on the time: compute- or bandwidth-bound, whichever is slower."""
        return max(self.flops / ceiling.flops_per_s, self.bytes / ceiling.bytes_per_s)


EMPTY = TrafficSummary(0, 0, 0, 0, 0)


class Traffic:
    """The kernels of one schedule over one graph, with their byte counts."""

    def __init__(self, graph, schedule, itemsize):
        self.graph, self.schedule, self.itemsize = graph, get_schedule(schedule), itemsize
        self.kernels = build_kernels(graph, self.schedule)
        self.stage_of = dict(graph.units)
        self._summaries = [self._summarise(k) for k in self.kernels]

    def _summarise(self, kernel):
        act = other = passes = 0
        for t in kernel.reads + kernel.writes:
            info = self.graph.tensors[t]
            if info.kind == "act":
                act, passes = act + info.numel * self.itemsize, passes + 1
            else:
                other += info.numel * self.itemsize
        return TrafficSummary(1, passes, act, other, kernel.macs)

    def total(self, phase=None, where=None):
        """Summary of the kernels of ``phase`` (None: all) whose unit satisfies ``where``."""
        out = EMPTY
        for k, s in zip(self.kernels, self._summaries):
            if (phase is None or k.phase == phase) and (where is None or where(k.unit)):
                out = out + s
        return out

    def per_unit(self, phase=None):
        """{unit: TrafficSummary} in execution order (stem, s1.b1, ..., head)."""
        return {u: self.total(phase, lambda x, u=u: x == u) for u, _ in self.graph.units}

    def per_stage(self, phase=None):
        """{stage: TrafficSummary} for stem, s1 ... sN, head."""
        stages = list(dict.fromkeys(s for _, s in self.graph.units))
        return {s: self.total(phase, lambda u, s=s: self.stage_of[u] == s) for s in stages}

    def per_operator(self, phase=None):
        """{role of a kernel's first operator ("a.conv", "se.pool", ...): TrafficSummary} summed
        over the network: where the bytes go, operator by operator (epilogues and on-load work
        count with the kernel that runs them)."""
        out = {}
        for k, s in zip(self.kernels, self._summaries):
            if phase is None or k.phase == phase:
                role = k.ops[0].split("/", 1)[1].split("#", 1)[0]
                out[role] = out.get(role, EMPTY) + s
        return out

    def per_kernel(self, phase=None):
        """[(Kernel, TrafficSummary)] in launch order."""
        return [(k, s) for k, s in zip(self.kernels, self._summaries)
                if phase is None or k.phase == phase]

    def roofline_seconds(self, ceiling, phase=None, where=None):
        """Sum over kernels of each kernel's own roofline bound."""
        return sum(s.roofline_seconds(ceiling) for k, s in zip(self.kernels, self._summaries)
                   if (phase is None or k.phase == phase) and (where is None or where(k.unit)))


def spec_of(model_or_spec):
    """An AnyNetSpec from itself or from a model (ours, torchvision's or timm's RegNet)."""
    if isinstance(model_or_spec, AnyNetSpec):
        return model_or_spec
    if isinstance(model_or_spec, torch.nn.Module):
        from .stages import spec_from_model
        return spec_from_model(model_or_spec)
    raise TypeError(f"model: expected an AnyNetSpec or a RegNet nn.Module, "
                    f"got {type(model_or_spec).__name__}")


def model_traffic(model, batch, resolution=224, *, schedule="eager", training=False,
                  dtype=torch.bfloat16):
    """Traffic of a whole network (an AnyNetSpec or a RegNet module) for ``batch`` images of
    size ``resolution``; ``training`` adds the backward pass and uses BN batch statistics."""
    graph = build_graph(spec_of(model), batch, resolution, training=training)
    return Traffic(graph, schedule, _itemsize(dtype))


def block_traffic(block_spec, batch, resolution, *, schedule="eager", training=False,
                  dtype=torch.bfloat16):
    """Traffic of one block alone; ``resolution`` is its input's (h, w) or side."""
    if not isinstance(block_spec, BlockSpec):
        raise TypeError(f"block_spec: expected a BlockSpec, got {type(block_spec).__name__}")
    graph = block_graph(block_spec, batch, resolution, training=training)
    return Traffic(graph, schedule, _itemsize(dtype))


def identity_block(width, group_width=8, se_ratio=0.25):
    """An identity (no projection) block of the given width: DESIGN.md section 5's reference."""
    return BlockSpec(stage=0, index=1, w_in=width, w_out=width, stride=1, bottleneck_multiplier=1.0,
                     group_width=group_width, se_ratio=se_ratio)


def block_passes(block_spec, *, schedule, training=False, phase="forward"):
    """Activation passes one block makes under a schedule (batch 1, 8x8 input: passes do not
    depend on sizes)."""
    return block_traffic(block_spec, 1, 8, schedule=schedule, training=training).total(phase).passes
