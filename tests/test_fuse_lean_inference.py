"""A fused block's lean inference (FusedResBottleneck._lean_forward): in CPU inference without
autograd (float32, or bfloat16 and bfloat16 autocast where oneDNN runs bfloat16) the block calls
its layers' inference_call instead of the layer modules. It must give exactly what the module
calls give, keep every forward hook, and step aside wherever the module path does something
else (autograd, float64, NCHW, a layer in training mode, SyncBatchNorm)."""
import copy

import pytest
import torch
from torch import nn

from regnet_ext.nn import FusedConvBNAct, FusedResBottleneck, folded_inference
from test_fuse import BUILDERS, images, make_pair, pickled_copy

pytestmark = pytest.mark.skipif(not folded_inference._AVAILABLE, reason="needs ATen built with oneDNN")


def _cl(x):
    return x.contiguous(memory_format=torch.channels_last)


def _count_calls(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", BUILDERS)
def test_lean_blocks_give_exactly_the_module_path_output(name, batch, monkeypatch):
    stock, fused = make_pair(name)
    stock.eval().to(memory_format=torch.channels_last)
    fused.eval().to(memory_format=torch.channels_last)
    x = _cl(images(batch, 64, seed=batch))
    with torch.inference_mode():
        lean, expected = fused(x), stock(x)
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(folded_inference, "lean_blocks", False)
        module_path = fused(x)
    torch.testing.assert_close(lean, module_path, rtol=0, atol=0)
    torch.testing.assert_close(lean, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    # A pickled copy (empty caches) takes the same path to the same output.
    with torch.no_grad():
        torch.testing.assert_close(pickled_copy(fused)(x), lean, rtol=0, atol=0)


def test_layers_are_not_called_as_modules_but_their_hooks_still_run(monkeypatch):
    _, fused = make_pair("ours_regnety_400mf")
    fused.eval().to(memory_format=torch.channels_last)
    x = _cl(images(2, 64))
    blocks = [m for m in fused.modules() if isinstance(m, FusedResBottleneck)]
    layer_calls = _count_calls(monkeypatch, FusedConvBNAct, "forward")
    lean_calls = _count_calls(monkeypatch, FusedResBottleneck, "_lean_forward")
    with torch.no_grad():
        expected = fused(x)
    assert len(lean_calls) == len(blocks)
    assert layer_calls == [fused.stem], "only the stem, outside any block, runs its module call"
    # A hook on one layer: that layer alone goes through its module call, and the hook runs.
    seen = []
    handle = fused.s3.b2.c.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    layer_calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=0)
    handle.remove()
    assert layer_calls == [fused.stem, fused.s3.b2.c] and len(seen) == 1
    # A global hook sends every layer through its module call.
    seen.clear()
    layer_calls.clear()
    handle = nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: seen.append(mod) if isinstance(mod, FusedConvBNAct) else None)
    try:
        with torch.no_grad():
            torch.testing.assert_close(fused(x), expected, rtol=0, atol=0)
    finally:
        handle.remove()
    layers = [m for m in fused.modules() if isinstance(m, FusedConvBNAct)]
    assert len(layer_calls) == len(seen) == len(layers)


def test_se_overwrites_only_a_conv_output_that_no_hook_has_seen():
    # The lean SE writes its result over conv b's output (squeeze_excite_); a forward hook on b
    # may keep that output, so then the SE must leave it as b returned it.
    _, fused = make_pair("ours_regnety_400mf")
    fused.eval().to(memory_format=torch.channels_last)
    x = _cl(images(2, 64))
    block = fused.s2.b2
    with torch.no_grad():
        expected = fused(x)
        block_input = fused.s2.b1(fused.s1(fused.stem(x)))
        b_output = block.b(block.a(block_input)).clone()
    kept = []
    handle = block.b.register_forward_hook(lambda mod, args, out: kept.append(out))
    try:
        with torch.no_grad():
            torch.testing.assert_close(fused(x), expected, rtol=0, atol=0)
    finally:
        handle.remove()
    torch.testing.assert_close(kept[0], b_output, rtol=0, atol=0)


def test_not_taken_with_autograd_float64_or_nchw(monkeypatch):
    _, fused = make_pair("ours_regnetx_400mf")
    fused.eval().to(memory_format=torch.channels_last)
    x = _cl(images(2, 64))
    lean_calls = _count_calls(monkeypatch, FusedResBottleneck, "_lean_forward")
    fused(x)  # parameters need gradients
    with torch.no_grad():
        copy.deepcopy(fused).double()(x.double())
        make_pair("ours_regnetx_400mf")[1].eval()(x.contiguous())  # an NCHW model and input
        # (A channels_last model turns NCHW images channels_last in its stem, as stock does,
        # so its blocks see channels_last.)
    assert lean_calls == []
    with torch.no_grad():
        fused(x)
    assert len(lean_calls) == sum(isinstance(m, FusedResBottleneck) for m in fused.modules())


def test_a_layer_left_in_training_mode_keeps_batch_statistics():
    stock, fused = make_pair("ours_regnety_400mf")
    for model in (stock, fused):
        model.eval().to(memory_format=torch.channels_last)
        model.get_submodule("s2.b1.b").train()  # BN recalibration of one layer, say
    x = _cl(images(3, 64, seed=5))
    with torch.no_grad():
        expected, actual = stock(x), fused(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    ours, theirs = fused.state_dict(), stock.state_dict()
    assert not torch.equal(ours["s2.b1.b.bn.running_var"], make_pair("ours_regnety_400mf")[0].state_dict()[
        "s2.b1.b.bn.running_var"]), "the layer in training mode updates its running statistics"
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_autocast_inference_after_bfloat16_layers_casts_the_parameters():
    # Under autocast the activations are bfloat16 and the parameters float32: a layer whose
    # kernel is ours must not hand the operator both (it raised a dtype error on CPUs where
    # oneDNN runs bfloat16; elsewhere this path is not reached and the test passes anyway).
    stock, fused = make_pair("ours_regnety_400mf")
    stock.eval().to(memory_format=torch.channels_last)
    fused.eval().to(memory_format=torch.channels_last)
    x = _cl(images(2, 64))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = stock(x), fused(x)
    assert actual.dtype == expected.dtype == torch.bfloat16
    assert (actual.float() - expected.float()).abs().max() <= 0.05 * expected.float().abs().max()


@pytest.mark.skipif(torch.bfloat16 not in folded_inference._DTYPES, reason="oneDNN runs no bfloat16 on this CPU")
def test_autocast_se_weights_are_cast_once_and_again_after_they_change():
    stock, fused = make_pair("ours_regnety_400mf")
    for model in (stock, fused):
        model.eval().to(memory_format=torch.channels_last)
    x = _cl(images(2, 64, seed=11))

    def run(model):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()

    run(fused)
    se = fused.s2.b1.se
    first = se._cast._entry[1]
    run(fused)
    assert all(a is b for a, b in zip(se._cast._entry[1], first)), "unchanged weights were cast again"
    with torch.no_grad():  # in place, as an optimizer step writes them, in both models
        for model in (stock, fused):
            model.s2.b1.se.reduce.weight.mul_(-1.5)
            model.s2.b1.se.expand.bias.add_(0.5)
    expected, actual = run(stock), run(fused)
    assert not torch.equal(se._cast._entry[1][0], first[0]), "the changed weight kept its old cast"
    assert (actual - expected).abs().max() <= 0.05 * expected.abs().max()


@pytest.mark.skipif(torch.bfloat16 not in folded_inference._DTYPES, reason="oneDNN runs no bfloat16 on this CPU")
@pytest.mark.parametrize("how", ["autocast", "bfloat16 model"])
def test_bfloat16_lean_blocks_give_exactly_the_module_path_output(how, monkeypatch):
    stock, fused = make_pair("ours_regnety_400mf")
    x = _cl(images(2, 64, seed=7))
    for model in (stock, fused):
        model.eval().to(memory_format=torch.channels_last)
    if how == "bfloat16 model":
        stock, fused, x = stock.bfloat16(), fused.bfloat16(), x.bfloat16()
    lean_calls = _count_calls(monkeypatch, FusedResBottleneck, "_lean_forward")

    def run(model):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
            return model(x)

    lean, expected = run(fused), run(stock)
    assert len(lean_calls) == sum(isinstance(m, FusedResBottleneck) for m in fused.modules())
    with monkeypatch.context() as m:
        m.setattr(folded_inference, "lean_blocks", False)
        module_path = run(fused)
    assert lean.dtype == module_path.dtype == torch.bfloat16
    torch.testing.assert_close(lean, module_path, rtol=0, atol=0)
    assert (lean.float() - expected.float()).abs().max() <= 0.05 * expected.float().abs().max()
