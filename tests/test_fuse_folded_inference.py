"""The cached-fold CPU inference path of FusedConvBNAct (regnet_ext/nn/folded_inference.py):
taken for channels_last no-grad inference, equal to the stock model, never stale after the
parameters or statistics change (optimizer step, load_state_dict, in-place edits, .to()), and
left alone where it does not apply (autograd, NCHW input, float64)."""
import copy

import pytest
import torch

from regnet_ext.models import regnet
from regnet_ext.nn import FusedConvBNAct, fuse
from regnet_ext.nn import folded_inference
from test_fuse import assert_rel_close, images, pickled_copy, randomize

pytestmark = pytest.mark.skipif(
    not folded_inference._AVAILABLE,
    reason="needs ATen built with oneDNN")


def _pair(name="RegNetY-400MF", packed_only=False):
    """packed_only: every layer takes the packed oneDNN path, none the operator (our kernels)."""
    torch.manual_seed(0)
    stock = randomize(regnet(name)).eval().to(memory_format=torch.channels_last)
    fused = fuse(copy.deepcopy(stock))
    if packed_only:
        for m in fused.modules():
            if isinstance(m, FusedConvBNAct):
                m._own_cpu_kernel_dtypes = frozenset()
    return stock, fused


def _cl(x):
    return x.contiguous(memory_format=torch.channels_last)


def _cached_layers(model):
    return sum(m._folded.filled for m in model.modules() if isinstance(m, FusedConvBNAct))


@pytest.mark.parametrize("name", ["RegNetY-400MF", "RegNetX-400MF"])
def test_channels_last_no_grad_inference_takes_the_cached_path_and_matches_stock(name):
    stock, fused = _pair(name)
    x = _cl(images(2, 64))
    with torch.no_grad():
        expected, actual = stock(x), fused(x)
    assert_rel_close(actual, expected, 1e-5, "folded inference")
    # Layers with 8 channels per group call the operator (our kernel, its own weight cache).
    layers = sum(isinstance(m, FusedConvBNAct) and torch.float32 not in m._own_cpu_kernel_dtypes
                 for m in fused.modules())
    assert _cached_layers(fused) == layers, "every other conv+BN layer should have run the cached fold"
    with torch.inference_mode():
        assert_rel_close(fused(x), expected, 1e-5, "under inference_mode")


def test_the_fold_follows_optimizer_steps_load_state_dict_and_in_place_edits():
    stock, fused = _pair()
    x = _cl(images(2, 64, seed=3))
    with torch.no_grad():
        fused(x)  # fills the caches
    # An optimizer step on the fused model's parameters (in place, version counters move).
    opt = torch.optim.SGD(fused.parameters(), lr=0.1)
    fused.train()
    fused(x).square().mean().backward()
    opt.step()
    fused.eval()
    stock.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert_rel_close(fused(x), stock(x), 1e-5, "after an optimizer step and train-mode statistics")
    # load_state_dict copies into the existing tensors.
    other = randomize(regnet("RegNetY-400MF"), seed=7).eval().to(memory_format=torch.channels_last)
    fused.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert_rel_close(fused(x), other(x), 1e-5, "after load_state_dict")
    # An in-place edit of one running variance.
    with torch.no_grad():
        fused.stem.bn.running_var.mul_(3.0)
        other.stem.bn.running_var.mul_(3.0)
        assert_rel_close(fused(x), other(x), 1e-5, "after an in-place running_var edit")


@pytest.mark.parametrize("grad", [False, True])
def test_training_forwards_that_change_only_the_running_statistics_are_seen(grad):
    # Eval, then training-mode forwards with the weights unchanged (BN recalibration, frozen
    # convs), then eval: the running-statistics update bumps their version counters, as ATen's
    # in-place ops do, so neither our folds nor the operator's cache keep the old statistics.
    # (Before, this eval reused the old fold: 10% off.)
    stock, fused = _pair()
    x = _cl(images(2, 64))
    bn = fused.stem.bn_module
    with torch.no_grad():
        assert_rel_close(fused(x), stock(x), 1e-5, "first eval")
    version = bn.running_mean._version
    with torch.set_grad_enabled(grad):
        for model in (stock, fused):
            model.train()
            model(images(4, 64, seed=5))
            model(images(4, 64, seed=6))
            model.eval()
    assert bn.running_mean._version == version + 2 and bn.running_var._version >= 2
    with torch.no_grad():
        assert_rel_close(fused(x), stock(x), 1e-5, "eval after training-mode forwards")
    with torch.inference_mode():  # running statistics updated inside inference mode
        for model in (stock, fused):
            model.train()(images(4, 64, seed=7))
            model.eval()
    with torch.no_grad():
        assert_rel_close(fused(x), stock(x), 1e-5, "eval after inference-mode training forwards")


def test_not_taken_with_autograd_nchw_or_float64():
    stock, fused = _pair()
    x = images(2, 64)
    nchw = fuse(copy.deepcopy(stock).to(memory_format=torch.contiguous_format))
    with torch.no_grad():
        nchw(x)  # NCHW weights and input: NCHW throughout, so no layer sees channels_last
    assert _cached_layers(nchw) == 0
    fused(_cl(x)).sum().backward()  # eval with autograd: gradients flow through the operator
    assert _cached_layers(fused) == 0
    assert fused.stem.conv.weight.grad is not None
    stock64, fused64 = stock.double(), fused.double()
    with torch.no_grad():
        assert_rel_close(fused64(_cl(x.double())), stock64(_cl(x.double())), 1e-10, "float64")
    assert _cached_layers(fused64) == 0


def test_copies_and_pickles_of_a_model_with_filled_caches():
    _, fused = _pair()
    x = _cl(images(1, 64))
    with torch.no_grad():
        expected = fused(x)
    clone = copy.deepcopy(fused)
    assert _cached_layers(clone) == 0, "a copy starts with empty caches"
    with torch.no_grad():
        assert_rel_close(clone(x), expected, 1e-6, "deepcopy")
    loaded = pickled_copy(fused)
    with torch.no_grad():
        assert_rel_close(loaded(x), expected, 1e-6, "pickled")


def test_alternating_resolutions_pack_each_shape_once(monkeypatch):
    stock, fused = _pair("RegNetX-400MF", packed_only=True)
    packs = []
    pack = folded_inference._PACK
    monkeypatch.setattr(folded_inference, "_PACK", lambda *args: packs.append(args[-1]) or pack(*args))
    inputs = [_cl(images(2, size, seed=size)) for size in (64, 48, 32)]
    with torch.no_grad():
        for rep in range(3):
            for x in inputs:
                assert_rel_close(fused(x), stock(x), 1e-5, f"{x.shape[-1]}px")
            if rep == 0:
                packed_in_first_round = len(packs)
    layers = [m for m in fused.modules() if isinstance(m, FusedConvBNAct) and m._folded.filled]
    assert layers and len(packs) == packed_in_first_round, "switching back to a shape repacked"
    # Once per layer and distinct input shape (late layers see 2x2 at both 64 and 48 px).
    assert len(packs) == sum(len(m._folded.shapes) for m in layers)
    assert all(len(m._folded.shapes) >= 2 for m in layers)
    # Beyond MAX_SHAPES the oldest shape goes.
    layer = layers[0]
    extra = [_cl(images(1, size)) for size in (40, 56)]
    with torch.no_grad():
        for x in extra:
            fused(x)
    stem_shapes = layer._folded.shapes
    assert {shape[1] for shape in stem_shapes} == {3}, "layers[0] should be the stem"
    assert len(stem_shapes) == folded_inference.FoldedConv.MAX_SHAPES
    assert all(shape[2] != 64 for shape in stem_shapes), stem_shapes


@pytest.mark.skipif(torch.bfloat16 not in folded_inference._DTYPES, reason="oneDNN runs no bfloat16 on this CPU")
@pytest.mark.parametrize("name", ["RegNetY-400MF", "RegNetX-400MF"])
def test_autocast_bfloat16_inference_takes_the_cached_fold_in_every_layer(name):
    # Residual layers included (ungrouped: oneDNN fuses their 16-bit residual); until 2026-12-05
    # they folded, cast and repacked their weights on every call.
    stock, fused = _pair(name)
    x = _cl(images(2, 64))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = stock(x), fused(x)
    assert actual.dtype == torch.bfloat16
    assert _cached_layers(fused) == sum(isinstance(m, FusedConvBNAct) for m in fused.modules())
    assert_rel_close(actual.float(), expected.float(), 3e-2, "autocast bfloat16")


@pytest.mark.skipif(torch.bfloat16 not in folded_inference._DTYPES, reason="oneDNN runs no bfloat16 on this CPU")
@pytest.mark.parametrize("name", ["RegNetY-400MF", "RegNetX-400MF"])
def test_autocast_layers_with_our_bfloat16_kernels_run_the_fold_through_the_operator(name, monkeypatch):
    # Under autocast the parameters stay float32, so the operator (all tensors of one dtype)
    # gets the cached bfloat16 fold under an identity BN: the packed path's numbers, our kernels.
    stock, fused = _pair(name)
    _, packed_only = _pair(name, packed_only=True)
    calls = []
    real = folded_inference.conv_bn_act_eval_call
    monkeypatch.setattr(folded_inference, "conv_bn_act_eval_call", lambda *a: calls.append(a) or real(*a))
    x = _cl(images(2, 64, seed=5))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, packed, actual = stock(x), packed_only(x), fused(x)
    routed = [m for m in fused.modules() if isinstance(m, FusedConvBNAct) and torch.bfloat16 in m._own_cpu_kernel_dtypes]
    assert routed and len(calls) == len(routed)
    for x_in, weight, bias, gamma, beta, mean, var, *_ in calls:
        assert bias is None and x_in.dtype == weight.dtype == beta.dtype == torch.bfloat16
        assert torch.equal(gamma, torch.ones_like(gamma)) and torch.equal(var, gamma)
        assert torch.equal(mean, torch.zeros_like(mean))
    assert actual.dtype == torch.bfloat16
    assert_rel_close(actual.float(), packed.float(), 1e-2, "operator vs packed oneDNN, bfloat16")
    assert_rel_close(actual.float(), expected.float(), 3e-2, "autocast bfloat16")


@pytest.mark.skipif(torch.bfloat16 not in folded_inference._DTYPES, reason="oneDNN runs no bfloat16 on this CPU")
def test_folds_made_under_inference_mode_are_not_inference_tensors():
    # The operator's weight cache keys tensors by their version counter, which inference tensors
    # lack: a fold made under inference_mode was folded and packed again on every call.
    _, fused = _pair("RegNetX-400MF")
    x = _cl(images(1, 64))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused(x)
    routed = [m for m in fused.modules() if isinstance(m, FusedConvBNAct) and torch.bfloat16 in m._own_cpu_kernel_dtypes]
    assert routed
    for m in routed:
        _, weight, bias, _ = m._folded._entry
        assert not weight.is_inference() and not bias.is_inference()
        assert not any(t.is_inference() for t in m._folded._identity_vectors)
