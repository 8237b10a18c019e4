"""Schedules: which operators of an OpGraph share a kernel, described by rules on operator roles.

Each operator gets one mode from the first rule whose pattern (fnmatch on its role) matches;
operators no rule matches run as their own kernel:

* ``own``: starts a kernel that reads its inputs from memory.
* ``epilogue``: runs in the kernel of the producer of its first input, on data still on chip
  (BN folded into a conv, ReLU or a residual add in a conv's epilogue, BN statistics
  accumulated while the conv writes its output).
* ``on_load``: never written; recomputed inside every kernel that consumes its output, on the
  consumer's load (BN-apply+ReLU or the SE scale applied while the next conv reads its input).

A kernel reads every tensor its operators (and the on-load operators they pull in) consume but
do not produce, and writes every tensor some other kernel or the caller needs. Describe a new
fused path by writing its rules; ``validate`` refuses schedules no kernel could run.
"""
import dataclasses
import fnmatch
from dataclasses import dataclass

MODES = ("own", "epilogue", "on_load")


@dataclass(frozen=True)
class Schedule:
    """Named fusion rules for inference graphs and for training (forward + backward) graphs."""

    name: str
    description: str
    eval_rules: tuple = ()
    train_rules: tuple = ()
    # (unit, pattern, mode): inference rules for one unit ("s1.b1"), tried before eval_rules.
    unit_eval_rules: tuple = ()

    def __post_init__(self):
        for label in ("eval_rules", "train_rules"):
            for rule in getattr(self, label):
                if (not isinstance(rule, tuple) or len(rule) != 2 or not isinstance(rule[0], str)
                        or rule[1] not in MODES):
                    raise ValueError(f"{label}: expected (pattern, mode) pairs with mode in "
                                     f"{MODES}, got {rule!r}")
        for rule in self.unit_eval_rules:
            if (not isinstance(rule, tuple) or len(rule) != 3 or not all(isinstance(r, str) for r in rule[:2])
                    or rule[2] not in MODES):
                raise ValueError(f"unit_eval_rules: expected (unit, pattern, mode) triples with mode in "
                                 f"{MODES}, got {rule!r}")

    def mode(self, role, training, unit=None):
        if not training:
            for rule_unit, pattern, mode in self.unit_eval_rules:
                if rule_unit == unit and fnmatch.fnmatchcase(role, pattern):
                    return mode
        for pattern, mode in (self.train_rules if training else self.eval_rules):
            if fnmatch.fnmatchcase(role, pattern):
                return mode
        return "own"


EAGER = Schedule("eager", "stock PyTorch eager: every operator is its own kernel")

COMPILE = Schedule(
    "compile",
    "torch.compile (inductor; freezing for inference): convs are library calls; BN folded into "
    "them (inference); chains of pointwise ops fuse; reductions are their own kernels",
    eval_rules=(("*.bn", "epilogue"), ("out.relu", "epilogue")),
    train_rules=(
        ("*.relu", "epilogue"), ("add", "epilogue"),
        ("*.relu.bwd", "on_load"), ("*.pool.bwd", "on_load"),
    ),
)

OURS = Schedule(
    "ours",
    "regnet_ext's fused path as DESIGN.md section 5 plans it. Inference: BN folded; ReLU and "
    "residual in conv epilogues; SE pooling in the grouped conv's epilogue; SE scale on the last "
    "conv's load. Training: BN statistics in the producing conv's epilogue; BN-apply+ReLU (and "
    "the SE scale) on the consumer's load; one fused pass for the last BN, residual and ReLU; "
    "backward: ReLU/BN backward on the conv backward's loads, one reduction pass per BN, the "
    "residual gradient summed in the conv backward's epilogue",
    eval_rules=(
        ("*.bn", "epilogue"), ("*.relu", "epilogue"), ("add", "epilogue"),
        ("se.pool", "epilogue"), ("se.scale", "on_load"),
    ),
    train_rules=(
        ("*.bn_stats", "epilogue"), ("*.bn_apply", "on_load"), ("out.relu", "epilogue"),
        ("*.relu", "on_load"), ("se.scale", "on_load"), ("add", "own"),
        ("*.relu.bwd", "on_load"), ("*.bn_apply.bwd", "on_load"), ("*.pool.bwd", "on_load"),
        ("se.scale.bwd_x", "on_load"), ("in.grad_accum", "epilogue"),
        ("*.grad_accum", "on_load"),
    ),
)

OURS_OPS = Schedule(
    "ours_ops",
    "regnet_ext's operators as they run today, one call each (csrc/cpu): conv_bn_act with BN "
    "folded and ReLU/residual in the epilogue (inference), or a conv pass accumulating BN "
    "statistics and a normalise(+residual, ReLU) pass (training); squeeze_excite as a pooling "
    "pass and a scaling pass. Backward: one pass for ReLU' and the BN sums (g stored), one for "
    "dz, then the conv gradients; SE's backward reads x once and dy twice",
    eval_rules=(("*.bn", "epilogue"), ("*.relu", "epilogue"), ("add", "epilogue")),
    train_rules=(
        ("*.bn_stats", "epilogue"), ("*.relu", "epilogue"), ("add", "epilogue"),
        ("proj.bn_apply.bwd_reduce", "own"), ("*.bn_apply.bwd_reduce", "epilogue"),
        ("se.scale.bwd_x", "on_load"), ("se.pool.bwd", "on_load"),
    ),
)

# conv_pair_relu (CPU inference, regnet_ext/nn/conv_pair.py): conv a, its BN and ReLU run
# inside conv b's kernel, on b's load of their rows; a's output is never written.
PAIR_RULES = (("a.conv", "on_load"), ("a.bn", "on_load"), ("a.relu", "on_load"))


def with_conv_pair(schedule, units):
    """``schedule`` with conv a computed inside conv b's kernel in ``units`` (the blocks whose
    last inference call ran conv_pair_relu); ``schedule`` itself when there are none."""
    units = tuple(units)
    if not units:
        return schedule
    return dataclasses.replace(
        schedule, name=f"{schedule.name}+pair",
        description=f"{schedule.description}; conv a inside conv b's kernel in {', '.join(units)}",
        unit_eval_rules=schedule.unit_eval_rules + tuple((u, p, m) for u in units for p, m in PAIR_RULES))


SCHEDULES = {s.name: s for s in (EAGER, COMPILE, OURS_OPS, OURS)}
# The schedule a fused model (regnet_ext.fuse) runs today: the profiler accounts its bytes with
# this one. Keep it in step with the fused path (or register_schedule a new "ours_ops").
FUSED_SCHEDULE = "ours_ops"


def register_schedule(schedule):
    """Makes ``schedule`` available by name, replacing one of the same name: when the fused path
    changes, registering its new description as "ours_ops" (FUSED_SCHEDULE) keeps profiles
    true to the code."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
    SCHEDULES[schedule.name] = schedule
    return schedule


def get_schedule(schedule):
    """A Schedule from itself or its name."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule in SCHEDULES:
        return SCHEDULES[schedule]
    raise ValueError(f"schedule: expected a Schedule or one of {sorted(SCHEDULES)}, "
                     f"got {schedule!r}")


@dataclass(frozen=True)
class Kernel:
    """One kernel launch of a schedule."""

    unit: str
    phase: str
    ops: tuple  # operators it runs (its own, its epilogues), execution order
    recomputed: tuple  # on-load operators it recomputes
    reads: tuple
    writes: tuple
    macs: int


def build_kernels(graph, schedule):
    """Partitions ``graph`` into the kernels ``schedule`` launches, in execution order."""
    schedule = get_schedule(schedule)
    producer, consumers = graph.producer(), graph.consumers()
    mode = {op.name: schedule.mode(op.role, graph.training, op.unit) for op in graph.ops}
    kernel_of, members = {}, []
    for op in graph.ops:
        m = mode[op.name]
        if m == "on_load":
            if not consumers.get(op.outputs[0]) or set(op.outputs) & set(graph.outputs):
                raise ValueError(f"schedule {schedule.name!r}: {op.name} is on_load but its "
                                 "output is needed outside any kernel")
            continue
        if m == "epilogue":
            src = producer.get(op.inputs[0])
            if src is None or mode[src.name] == "on_load":
                raise ValueError(f"schedule {schedule.name!r}: {op.name} is an epilogue but its "
                                 f"first input {op.inputs[0]!r} is not produced by a kernel")
            k = kernel_of[src.name]
            members[k].append(op)
        else:
            k = len(members)
            members.append([op])
        kernel_of[op.name] = k

    def pulled_in(ops):
        """The on-load operators a kernel recomputes (transitively)."""
        seen, stack = {}, [t for op in ops for t in op.inputs]
        while stack:
            src = producer.get(stack.pop())
            if src is not None and mode[src.name] == "on_load" and src.name not in seen:
                seen[src.name] = src
                stack.extend(src.inputs)
        return [op for op in graph.ops if op.name in seen]

    expanded = []
    for ops in members:
        extra = pulled_in(ops)
        expanded.append((ops, extra, {op.name for op in ops} | {op.name for op in extra}))
    kernels = []
    for k, (ops, extra, names) in enumerate(expanded):
        everything = extra + ops
        produced = {t for op in everything for t in op.outputs}
        reads = _unique(t for op in everything for t in op.inputs if t not in produced)
        writes = _unique(
            t for op in ops for t in op.outputs
            if t in graph.outputs or graph.tensors[t].kind == "grad_param"
            or any(c.name not in names for c in consumers.get(t, ())))
        _check_reductions(schedule, everything, names, producer)
        kernels.append(Kernel(ops[0].unit, ops[0].phase, tuple(op.name for op in ops),
                              tuple(op.name for op in extra), reads, writes,
                              sum(op.macs for op in everything)))
    _check_acyclic(schedule, kernels, graph)
    return kernels


def _unique(items):
    return tuple(dict.fromkeys(items))


def _check_reductions(schedule, ops, names, producer):
    for op in ops:
        for t in op.inputs:
            src = producer.get(t)
            if src is not None and src.reduction and src.name in names:
                raise ValueError(f"schedule {schedule.name!r}: {op.name} needs the complete "
                                 f"result of the reduction {src.name} in the same kernel")


def _check_acyclic(schedule, kernels, graph):
    """Kahn's algorithm: every kernel must be able to run after the kernels it reads from."""
    writer = {t: i for i, k in enumerate(kernels) for t in k.writes}
    deps = [{writer[t] for t in k.reads if t in writer} - {i} for i, k in enumerate(kernels)]
    users = [[] for _ in kernels]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    missing = [len(d) for d in deps]
    ready = [i for i, n in enumerate(missing) if n == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for u in users[i]:
            missing[u] -= 1
            if missing[u] == 0:
                ready.append(u)
    if done != len(kernels):
        stuck = next(i for i, n in enumerate(missing) if n)
        raise ValueError(f"schedule {schedule.name!r}: kernels depend on each other in a cycle "
                         f"(through {' / '.join(kernels[stuck].ops)})")
