"""The traffic model: DESIGN.md section 5's pass counts, eager bytes against what stock PyTorch's
operators really read and write (recorded at the dispatcher), flops against complexity(), and
schedule validation."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from regnet_ext.models import complexity, regnet_spec
from regnet_ext.models.layers import ResBottleneckBlock
from regnet_ext.models.spec import BlockSpec
from regnet_ext.profiling import (NOMINAL, Schedule, block_traffic, identity_block, model_traffic)
from regnet_ext.profiling.graph import build_graph
from regnet_ext.profiling.traffic import block_passes


@pytest.mark.parametrize("schedule, training, expected", [
    ("eager", False, 24), ("compile", False, 16), ("ours", False, 7),
    ("eager", True, 27), ("ours", True, 10),
    # Today's operators called one by one: SE pools and scales in passes of its own, training
    # BN normalises in a second pass over the stored conv output.
    ("ours_ops", False, 10), ("ours_ops", True, 16),
])
def test_identity_y_block_passes_match_design(schedule, training, expected):
    block = identity_block(int(torch.randint(2, 12, ()).item()) * 8)
    assert block_passes(block, schedule=schedule, training=training) == expected


def test_x_block_passes():
    # Without SE: eager loses the pooling read and the scale's read + write; ours is unchanged.
    block = identity_block(64, se_ratio=0.0)
    assert block_passes(block, schedule="eager") == 21
    assert block_passes(block, schedule="ours") == 7
    assert block_passes(block, schedule="ours", training=True) == 9  # no separate pooling pass


class _Recorder(TorchDispatchMode):
    """Bytes of feature maps (4-d, batch-sized, more than one pixel) each aten op reads and
    writes; weights (4-d too) are told apart by their first dimension."""

    _VIEWS = {"view", "_unsafe_view", "expand", "t", "permute", "as_strided", "detach", "alias",
              "squeeze", "unsqueeze", "reshape", "flatten", "_reshape_alias"}

    def __init__(self, batch):
        super().__init__()
        self.batch = batch
        self.passes = self.bytes = 0
        self.batch_norms = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in self._VIEWS:
            return out
        if "batch_norm" in func.overloadpacket.__name__:
            self.batch_norms += 1
        flat = torch.utils._pytree.tree_leaves((args, kwargs, out))
        for t in flat:
            if (isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[0] == self.batch
                    and t.shape[2] * t.shape[3] > 1):
                self.passes += 1
                self.bytes += t.numel() * t.element_size()
        return out


@pytest.mark.parametrize("w_in, w_out, stride, se", [
    (48, 48, 1, 0.25), (32, 48, 2, 0.25), (64, 64, 1, 0.0), (24, 56, 2, 0.0),
])
@pytest.mark.parametrize("training", [False, True])
def test_eager_forward_bytes_match_pytorch(w_in, w_out, stride, se, training):
    spec = BlockSpec(stage=0, index=0, w_in=w_in, w_out=w_out, stride=stride,
                     bottleneck_multiplier=1.0, group_width=8, se_ratio=se)
    batch, hw = 2, (int(torch.randint(5, 12, ()).item()), int(torch.randint(5, 12, ()).item()))
    module = ResBottleneckBlock(spec).train(training)
    x = torch.randn(batch, w_in, *hw)
    rec = _Recorder(batch)
    with torch.no_grad(), rec:
        module(x)
    model = block_traffic(spec, batch, hw, schedule="eager", training=training,
                          dtype=torch.float32).total("forward")
    # A training batch_norm kernel reads its input twice (statistics, then normalisation).
    extra_passes = rec.batch_norms if training else 0
    assert model.passes == rec.passes + extra_passes
    bn_inputs = 0
    if training:
        bn_inputs = sum(t.numel() * 4 for t in _bn_inputs(module, x))
    assert model.activation_bytes == rec.bytes + bn_inputs


def _bn_inputs(module, x):
    """The tensors the block's BNs normalise (captured with hooks)."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0]))
             for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("name", ["RegNetY-400MF", "RegNetX-3.2GF", "RegNetY-4.0GF"])
def test_macs_match_complexity(name):
    spec = regnet_spec(name)
    resolution = int(torch.randint(4, 9, ()).item()) * 32
    traffic = model_traffic(spec, 1, resolution, schedule="ours")
    assert traffic.total().macs == complexity(spec, resolution).flops


def test_macs_match_reference_table():
    assert model_traffic(regnet_spec("RegNetY-400MF"), 1, 224).total().macs == 401_849_056


def test_training_graph_gradients():
    spec = regnet_spec("RegNetX-200MF")
    graph = build_graph(spec, 2, 64, training=True)
    params = [t for t in graph.tensors.values() if t.kind == "param"]
    grads = {t.name for t in graph.tensors.values() if t.kind == "grad_param"}
    assert grads == {f"grad:{p.name}" for p in params}
    fwd = sum(op.macs for op in graph.ops if op.phase == "forward")
    bwd = sum(op.macs for op in graph.ops if op.phase == "backward")
    stem = next(op.macs for op in graph.ops if op.name == "stem/stem.conv")
    # Backward: data and weight gradients per conv (none for the image), 2x for the MLPs.
    assert bwd == 2 * fwd - stem
    traffic = model_traffic(spec, 2, 64, schedule="eager", training=True)
    written = {t for k in traffic.kernels for t in k.writes}
    assert grads <= written


def test_bytes_scale_with_dtype_and_batch():
    spec = regnet_spec("RegNetY-200MF")
    base = model_traffic(spec, 2, 64, dtype=torch.bfloat16).total()
    assert model_traffic(spec, 2, 64, dtype=torch.float32).total().bytes == 2 * base.bytes
    doubled = model_traffic(spec, 4, 64, dtype=torch.bfloat16).total()
    assert doubled.activation_bytes == 2 * base.activation_bytes
    assert doubled.macs == 2 * base.macs


def test_schedules_order_and_roofline():
    spec = regnet_spec("RegNetY-4.0GF")
    h100 = NOMINAL["h100"]
    bytes_, times = {}, {}
    for name in ("eager", "compile", "ours"):
        t = model_traffic(spec, 128, 224, schedule=name)
        total = t.total()
        bytes_[name], times[name] = total.bytes, t.roofline_seconds(h100)
        # The per-kernel bound is at least the whole model's bound.
        assert times[name] >= max(total.flops / h100.flops_per_s, total.bytes / h100.bytes_per_s)
    assert bytes_["ours"] < bytes_["compile"] < bytes_["eager"]
    assert times["ours"] < times["eager"]


def test_per_stage_sums_to_total():
    t = model_traffic(regnet_spec("RegNetY-800MF"), 3, 96, schedule="ours", training=True)
    stages = t.per_stage()
    assert list(stages) == ["stem", "s1", "s2", "s3", "s4", "head"]
    assert sum(s.bytes for s in stages.values()) == t.total().bytes
    assert sum(s.kernels for s in t.per_unit().values()) == len(t.kernels)


def test_per_operator_view():
    t = model_traffic(regnet_spec("RegNetY-400MF"), 2, 64, schedule="eager")
    ops = t.per_operator()
    assert sum(s.bytes for s in ops.values()) == t.total().bytes
    # Eager: every BN is its own kernel reading and writing one feature map.
    assert ops["a.bn"].passes == 2 * sum(regnet_spec("RegNetY-400MF").depths)
    assert "b.bn" not in model_traffic(regnet_spec("RegNetY-400MF"), 2, 64,
                                       schedule="ours").per_operator()


def test_invalid_schedules_are_refused():
    block = identity_block(32)
    cycle = Schedule("cycle", "scale in the ReLU's kernel needs the gate it feeds",
                     eval_rules=(("se.scale", "epilogue"),))
    with pytest.raises(ValueError, match="cycle"):
        block_traffic(block, 1, 8, schedule=cycle)
    same_kernel = Schedule("bn", "applying batch statistics in the conv that computes them",
                           train_rules=(("*.bn_stats", "epilogue"), ("*.bn_apply", "epilogue")))
    with pytest.raises(ValueError, match="reduction"):
        block_traffic(block, 1, 8, schedule=same_kernel, training=True)
    lost = Schedule("lost", "the block output is never written", eval_rules=(("out.relu", "on_load"),))
    with pytest.raises(ValueError, match="on_load"):
        block_traffic(block, 1, 8, schedule=lost)
    with pytest.raises(ValueError, match="mode"):
        Schedule("bad", "", eval_rules=(("*.bn", "fold"),))
    with pytest.raises(ValueError, match="schedule"):
        block_traffic(block, 1, 8, schedule="nonexistent")


def test_bad_arguments():
    spec = regnet_spec("RegNetY-200MF")
    with pytest.raises(ValueError, match="batch"):
        model_traffic(spec, 0, 224)
    with pytest.raises(ValueError, match="resolution"):
        model_traffic(spec, 1, (224,))
    with pytest.raises(ValueError, match="dtype"):
        model_traffic(spec, 1, 224, dtype="int8")
    with pytest.raises(ValueError, match="dtype"):
        model_traffic(spec, 1, 224, dtype="float33")
    with pytest.raises(TypeError, match="model"):
        model_traffic("RegNetY-200MF", 1, 224)
