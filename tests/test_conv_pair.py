"""conv_pair_relu (csrc/cpu/conv_pair.cpp): a bottleneck's 1x1 conv and grouped 3x3 conv run band
by band, against the float64 reference on shapes with one band and many (uneven last band, image
edges at both ends), both strides, 8 and 16 channels per group; its errors, opcheck, and the fused
block's use of it (regnet_ext/nn/conv_pair.py): taken only where it applies (and, with the CPU
autotuner on, where it timed faster), equal to the stock model, never stale after the parameters
change."""
import copy

import pytest
import torch

import regnet_ext._C as compiled
from regnet_ext.models import regnet
from regnet_ext.nn import conv_pair, fuse
from regnet_ext.nn.modules import FusedResBottleneck
from regnet_ext.ops import clear_cpu_conv_autotune, conv_pair_relu
from regnet_ext.selfcheck import reference_conv_pair
from test_fuse import assert_rel_close, images, randomize

pytestmark = pytest.mark.skipif(not getattr(compiled, "narrow_group_kernel", 0),
                                reason="built without AVX-512 or AVX2+FMA")


def _case(batch, in_c, channels, width, height, per_group, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_c, height, width, generator=g, dtype=torch.float64)
    weight_a = torch.randn(channels, in_c, 1, 1, generator=g, dtype=torch.float64) / in_c ** 0.5
    weight_b = torch.randn(channels, per_group, 3, 3, generator=g, dtype=torch.float64) / (9 * per_group) ** 0.5
    bias_a = torch.randn(channels, generator=g, dtype=torch.float64) * 0.5
    bias_b = torch.randn(channels, generator=g, dtype=torch.float64) * 0.5
    return x, weight_a, bias_a, weight_b, bias_b


# (batch, in channels, channels, width, height, per group, stride): 104 = 13 groups of 8 (a
# half-used last register); 112x112 at 48 channels makes 12 bands of 4-5 rows, 13 rows and 7
# rows one band; odd heights put the last window on the bottom padding; 300 px wide at 104
# channels takes the minimum band of 4 rows; 72 input channels take ATen's GEMM for conv a
# (up to 64, our register tiles).
SHAPES = [(1, 32, 48, 112, 112, 8, 2), (3, 48, 104, 14, 13, 8, 2), (2, 24, 32, 9, 7, 16, 1),
          (1, 16, 64, 14, 14, 8, 1), (2, 40, 48, 6, 5, 16, 2), (1, 8, 104, 57, 61, 8, 1),
          (2, 64, 64, 29, 29, 16, 2), (1, 16, 104, 300, 11, 8, 1), (2, 72, 48, 11, 10, 8, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"n{s[0]}i{s[1]}c{s[2]}w{s[3]}h{s[4]}g{s[5]}s{s[6]}" for s in SHAPES])
def test_matches_float64_reference(shape):
    batch, in_c, channels, width, height, per_group, stride = shape
    case = _case(batch, in_c, channels, width, height, per_group)
    groups = channels // per_group
    expected = reference_conv_pair(*case, stride, groups)
    x, *params = (t.float() for t in case)
    for layout in (torch.channels_last, torch.contiguous_format):
        y = conv_pair_relu(x.contiguous(memory_format=layout), *params, stride=stride, groups=groups)
        assert y.shape == expected.shape and y.is_contiguous(memory_format=torch.channels_last)
        assert_rel_close(y, expected, 2e-6, f"conv_pair_relu {layout}")


def test_nan_propagates_as_through_relu():
    x, *params = (t.float() for t in _case(1, 16, 32, 12, 12, 8))
    x[0, 3, 5, 6] = float("nan")
    y = conv_pair_relu(x, *params, stride=2, groups=4)
    expected = reference_conv_pair(x, *params, 2, 4)
    assert torch.equal(y.isnan(), expected.isnan()) and y.isnan().any()


def test_bad_input_is_refused_with_the_argument_named():
    x, wa, ba, wb, bb = (t.float() for t in _case(1, 16, 32, 8, 8, 8))
    cases = [
        ((x.double(), wa, ba, wb, bb, 1, 4), "x must be float32"),
        ((x, wa.double(), ba, wb, bb, 1, 4), "weight_a must have the dtype of x"),
        ((x, wa[:, :8], ba, wb, bb, 1, 4), "weight_a (C, C_in of x, 1, 1)"),
        ((x, wa, ba[:5], wb, bb, 1, 4), "bias_a must have shape [32]"),
        ((x, wa, ba, wb[:, :4], bb, 1, 4), "weight_b (C, C/groups, 3, 3)"),
        ((x, wa, ba, wb, bb[:3], 1, 4), "bias_b must have shape [32]"),
        ((x, wa, ba, wb, bb, 3, 4), "stride must be 1 or 2"),
        ((x, wa, ba, wb.reshape(32, 2, 4, 3, 3)[:, 0], bb, 1, 8), "needs 8 or 16 channels per group"),
        ((x[0], wa, ba, wb, bb, 1, 4), "x (N, C, H, W) must be 4-D"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            torch.ops.regnet_ext.conv_pair_relu(*args)
    with pytest.raises(RuntimeError, match="has no autograd"):
        conv_pair_relu(x, wa.requires_grad_(), ba, wb, bb, stride=1, groups=4)


def test_opcheck():
    x, *params = (t.float() for t in _case(2, 16, 32, 10, 9, 16))
    torch.library.opcheck(torch.ops.regnet_ext.conv_pair_relu.default,
                          (x.contiguous(memory_format=torch.channels_last), *params, 2, 2))


def _fused_pair(name):
    stock = randomize(regnet(name)).eval().to(memory_format=torch.channels_last)
    return stock, fuse(copy.deepcopy(stock))


def _pair_calls(model, x):
    with torch.profiler.profile() as prof:
        model(x)
    return sum(e.count for e in prof.key_averages() if e.key == "regnet_ext::conv_pair_relu")


@pytest.mark.parametrize("name", ["RegNetY-400MF", "RegNetX-400MF"])
def test_fused_blocks_take_it_above_the_size_threshold_and_match_stock(name, monkeypatch):
    stock, fused = _fused_pair(name)
    x = images(2, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = stock(x)
        assert _pair_calls(fused, x) == 0, "64px at batch 2 is below MIN_INTERMEDIATE_BYTES"
        # The rule: conv a's output of at least MIN_INTERMEDIATE_BYTES, at most MAX_IN_CHANNELS inputs.
        monkeypatch.setattr(conv_pair, "MIN_INTERMEDIATE_BYTES", 1)
        narrow_inputs = sum(1 for m in fused.modules() if isinstance(m, FusedResBottleneck)
                            and m.part("a").conv_module.in_channels <= conv_pair.MAX_IN_CHANNELS)
        assert 0 < _pair_calls(fused, x) == narrow_inputs
        monkeypatch.setattr(conv_pair, "MIN_INTERMEDIATE_BYTES", 0)
        monkeypatch.setattr(conv_pair, "MAX_IN_CHANNELS", 1 << 30)
        blocks = sum(1 for m in fused.modules() if isinstance(m, FusedResBottleneck))
        assert blocks > 0 and all(m._pair is not None for m in fused.modules() if isinstance(m, FusedResBottleneck))
        assert _pair_calls(fused, x) == blocks
        assert_rel_close(fused(x), expected, 1e-5, "fused with conv_pair_relu")
        monkeypatch.setattr(conv_pair, "enabled", False)
        assert _pair_calls(fused, x) == 0


def test_timed_choice_keeps_the_faster_per_shape_and_clearing_forgets_it(monkeypatch):
    # The autotuner on (conftest turns it off elsewhere), the rule taking every block; the timing
    # itself replaced by a verdict that counts its calls (the real one: the next test).
    monkeypatch.setenv("REGNET_EXT_CPU_AUTOTUNE", "1")
    monkeypatch.setattr(conv_pair, "MIN_INTERMEDIATE_BYTES", 0)
    monkeypatch.setattr(conv_pair, "MAX_IN_CHANNELS", 1 << 30)
    clear_cpu_conv_autotune()
    verdict, timings = [False], []

    def fake_timing(pair, separate):
        timings.append((pair, separate))
        return verdict[0]
    monkeypatch.setattr(conv_pair, "_pair_is_faster", fake_timing)
    stock, fused = _fused_pair("RegNetY-400MF")
    blocks = sum(1 for m in fused.modules() if isinstance(m, FusedResBottleneck))
    x = images(2, 64).contiguous(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            expected = stock(x)
            assert _pair_calls(fused, x) == 0, "timed slower: the blocks' own layers run"
            shapes = len(conv_pair.decisions())
            assert 0 < shapes == len(timings) <= blocks and not any(conv_pair.decisions().values())
            assert_rel_close(fused(x), expected, 1e-5, "fused, the pair timed slower")
            assert len(timings) == shapes, "each shape is timed once"
            clear_cpu_conv_autotune()
            assert conv_pair.decisions() == {}
            verdict[0] = True
            assert _pair_calls(fused, x) == blocks and len(timings) == 2 * shapes
            assert all(conv_pair.decisions().values())
            assert_rel_close(fused(x), expected, 1e-5, "fused, the pair timed faster")
            # Untimed: the rule alone (and nothing timed), as with the autotuner off.
            clear_cpu_conv_autotune()
            verdict[0] = False
            monkeypatch.setattr(conv_pair, "timed", False)
            assert _pair_calls(fused, x) == blocks and len(timings) == 2 * shapes
            monkeypatch.setattr(conv_pair, "timed", True)
            monkeypatch.setenv("REGNET_EXT_CPU_AUTOTUNE", "0")
            assert _pair_calls(fused, x) == blocks and conv_pair.decisions() == {}
    finally:
        clear_cpu_conv_autotune()


def test_the_timing_returns_the_faster():
    import time
    assert conv_pair._pair_is_faster(lambda: None, lambda: time.sleep(0.002)) is True
    assert conv_pair._pair_is_faster(lambda: time.sleep(0.002), lambda: None) is False


def test_not_taken_in_training_with_autograd_float64_or_autocast_and_never_stale(monkeypatch):
    monkeypatch.setattr(conv_pair, "MIN_INTERMEDIATE_BYTES", 0)
    monkeypatch.setattr(conv_pair, "MAX_IN_CHANNELS", 1 << 30)
    stock, fused = _fused_pair("RegNetY-400MF")
    x = images(2, 64).contiguous(memory_format=torch.channels_last)
    assert _pair_calls(fused, x) == 0, "parameters need gradients"
    with torch.no_grad():
        assert _pair_calls(fused.double(), x.double()) == 0
        fused.float()
        assert _pair_calls(copy.deepcopy(fused).train(), x) == 0  # (a copy: it updates running stats)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert _pair_calls(fused, x) == 0
        calls = _pair_calls(fused, x)
        assert calls > 0
        # A forward hook on layer a or b keeps that block off the pair, so the hook runs.
        seen = []
        handle = fused.s2.b1.b.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
        assert _pair_calls(fused, x) == calls - 1 and len(seen) == 1
        handle.remove()
        # An in-place edit of one block's BN statistics and conv weight refolds.
        for model in (stock, fused):
            model.s2.b1.a.bn.running_var.mul_(2.5)
            model.s2.b1.b.conv.weight.mul_(-1.5)
        assert_rel_close(fused(x), stock(x), 1e-5, "after in-place edits")


def test_the_profiler_accounts_blocks_that_ran_the_pair(monkeypatch):
    from regnet_ext.profiling import Ceiling, model_traffic, profile
    from regnet_ext.profiling.schedules import FUSED_SCHEDULE, Schedule

    ceiling = Ceiling("test ceiling", 10e9, 100e9, "nominal")
    model = regnet(w0=16, wa=8.0, wm=1.5, depth=4, group_width=8, se_ratio=0.25)
    monkeypatch.setattr(conv_pair, "MIN_INTERMEDIATE_BYTES", 100 << 10)  # the first blocks only
    result = profile(model, (2, 3, 64, 64), fused=True, iters=1, warmup=0, ceiling=ceiling)
    assert result.meta["schedule"] == FUSED_SCHEDULE + "+pair"
    units = {u["name"]: u for u in result.units}
    plain = model_traffic(model.spec, 2, 64, schedule=FUSED_SCHEDULE, dtype=torch.float32).per_unit()
    # s1.b1's conv a writes 2 x 16 x 32 x 32 floats that conv b reads back, unless the pair runs.
    a_out = 2 * 2 * 16 * 32 * 32 * 4
    assert units["s1.b1"]["bytes"] == plain["s1.b1"].bytes - a_out
    assert all(units[u]["bytes"] == plain[u].bytes for u in units if u not in ("s1.b1", "s2.b1"))
    # An explicit schedule is kept as given.
    result = profile(model, (2, 3, 64, 64), fused=True, iters=1, warmup=0, ceiling=ceiling, schedule="ours_ops")
    assert result.meta["schedule"] == "ours_ops"
    with pytest.raises(ValueError, match="unit_eval_rules"):
        Schedule("x", "y", unit_eval_rules=(("s1.b1", "a.conv"),))
