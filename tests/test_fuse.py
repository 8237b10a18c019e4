"""fuse()/unfuse() on our RegNetY/X-400MF, torchvision's regnet_y_400mf and timm's regnety_004
(random weights, random BN statistics): eval outputs, 10 SGD steps (losses, parameters, running
statistics), state_dict round trips, optimizer continuity and unfuse, each against the same model
left stock. Also a non-RegNet model (ResNet-18), the report, verify=True and bad input.
"""
import copy
import io

import pytest
import torch
from torch import nn

from regnet_ext.models import regnet
from regnet_ext.nn import (FusedConvBNAct, FusedResBottleneck, FusedSqueezeExcite, fuse, unfuse)
from regnet_ext.nn import fuse_model

torchvision = pytest.importorskip("torchvision")


def _timm_regnety_004():
    timm = pytest.importorskip("timm")
    return timm.create_model("regnety_004", pretrained=False)


BUILDERS = {
    "ours_regnety_400mf": lambda: regnet("RegNetY-400MF"),
    "ours_regnetx_400mf": lambda: regnet("RegNetX-400MF"),
    "torchvision_regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(weights=None),
    "timm_regnety_004": _timm_regnety_004,
}
# Blocks per model (stem + blocks are all swapped whole).
EXPECTED_BLOCKS = {"ours_regnety_400mf": 16, "ours_regnetx_400mf": 22,
                   "torchvision_regnet_y_400mf": 16, "timm_regnety_004": 16}


def randomize(model, seed=0):
    """Random BN statistics and affine parameters (a fresh model's are trivial), and small random
    SE biases, so that folding and the epilogues are really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def make_pair(name, dtype=torch.float32):
    torch.manual_seed(0)
    stock = randomize(BUILDERS[name]()).to(dtype)
    fused = copy.deepcopy(stock)
    fuse(fused)
    return stock, fused


def images(n, size, dtype=torch.float32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def pickled_copy(module):
    """module after a torch.save/torch.load round trip."""
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def assert_rel_close(actual, expected, rel, name):
    scale = expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} x max |expected| {scale:.3g}"


@pytest.mark.parametrize("name", BUILDERS)
def test_fuse_swaps_whole_blocks_and_keeps_state_dict(name):
    stock = randomize(BUILDERS[name]())
    keys = list(stock.state_dict(keep_vars=True).items())
    names = [n for n, _ in stock.named_parameters()]
    model, report = fuse(stock, report=True)
    assert model is stock
    assert report.count("FusedResBottleneck") == EXPECTED_BLOCKS[name]
    assert report.count("FusedConvBNAct") == 1  # the stem
    assert report.count("FusedLinear") == 1  # the classifier
    assert report.left_stock == [] and report.notes == []
    # The same tensors under the same keys, in the same order.
    after = list(model.state_dict(keep_vars=True).items())
    assert [k for k, _ in after] == [k for k, _ in keys]
    assert all(a is b for (_, a), (_, b) in zip(after, keys))
    assert [n for n, _ in model.named_parameters()] == names
    se_blocks = [m for m in model.modules() if isinstance(m, FusedSqueezeExcite)]
    assert len(se_blocks) == (0 if "regnetx" in name else EXPECTED_BLOCKS[name])
    # Fusing again swaps nothing and says why (naming the outermost fused modules: a FusedHead
    # holds the FusedLinear swapped in after it).
    paths = [path for path, _, _ in report.swapped]
    outermost = [p for p in paths if not any(p.startswith(q + ".") for q in paths)]
    again, report = fuse(model, report=True)
    assert again is model and report.swapped == [] and report.already_fused == outermost
    assert f"already fused before this call: {len(outermost)} module(s)" in str(report)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", BUILDERS)
def test_fused_eval_output_equals_stock(name, channels_last):
    stock, fused = make_pair(name)
    stock.eval(), fused.eval()
    x = images(2, 96)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        stock, fused = stock.to(memory_format=torch.channels_last), fused.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, actual = stock(x), fused(x)
    assert_rel_close(actual, expected, 1e-5, f"{name} eval")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_channels_last_model_turns_nchw_input_channels_last_as_stock_does(mode):
    # nn.Conv2d makes channels_last output when its weight is channels_last; the fused layers
    # follow (the operator alone keeps its input's format), so such a model fed NCHW images
    # runs channels_last after the stem (before: NCHW throughout, slower than stock).
    stock, fused = (m.to(memory_format=torch.channels_last).train(mode == "train")
                    for m in make_pair("ours_regnety_400mf"))
    x = images(2, 64)
    with torch.no_grad():
        stock_stem, fused_stem = stock.stem(x), fused.stem(x)
        assert stock_stem.is_contiguous(memory_format=torch.channels_last)
        assert fused_stem.is_contiguous(memory_format=torch.channels_last)
        assert_rel_close(fused_stem, stock_stem, 1e-5, "stem")
        # (training mode: batch statistics of 2 images, down to 2x2 px in s4, amplify rounding)
        assert_rel_close(fused(x), stock(x), 1e-5 if mode == "eval" else 1e-4, "NCHW images")
    plain_stock, plain_fused = make_pair("ours_regnety_400mf")  # NCHW weights: NCHW stays NCHW
    with torch.no_grad():
        assert plain_fused.eval().stem(x).is_contiguous() and plain_stock.eval().stem(x).is_contiguous()


def _sgd_run(model, dtype, lr, steps=10):
    """10 SGD steps on one fixed random batch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, 3, 64, 64, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.randint(0, 1000, (8,), generator=gen)
    model.train()
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("name", BUILDERS)
def test_ten_sgd_steps_match_stock_float64(name):
    """Losses, parameters, their updates and running statistics equal stock's to 1e-9 (the steps
    are small: training a randomly initialised RegNet amplifies any rounding difference step after
    step, lr 1e-3 with momentum turns 1e-15 into 1e-3 in 10 steps, stock against stock alike)."""
    stock, fused = make_pair(name, torch.float64)
    initial = {k: v.clone() for k, v in stock.state_dict().items()}
    stock_losses, fused_losses = _sgd_run(stock, torch.float64, 1e-4), _sgd_run(fused, torch.float64, 1e-4)
    assert stock_losses[-1] < stock_losses[0]  # it trains
    torch.testing.assert_close(fused_losses, stock_losses, rtol=1e-9, atol=0)
    for (key, ours), (_, ref) in zip(fused.state_dict().items(), stock.state_dict().items()):
        if ref.is_floating_point():
            assert_rel_close(ours, ref, 1e-9, f"{name} {key}")
            assert_rel_close(ours - initial[key], ref - initial[key], 1e-6, f"{name} {key} update")
        else:
            assert torch.equal(ours, ref) and int(ours) == 10, key  # num_batches_tracked


def _worst_rel_error(state, reference):
    return max((state[k].double() - v).abs().max().item() / max(v.abs().max().item(), 1e-12)
               for k, v in reference.items() if v.is_floating_point())


@pytest.mark.parametrize("name", BUILDERS)
def test_ten_sgd_steps_in_float32_are_as_accurate_as_stock(name):
    """float32 against a float64 run of the same steps. The first loss (a pure forward) matches
    stock float32 to 1e-4; after that, stock float32 itself drifts from the float64 run by about 1%
    (this training is ill-conditioned), so the fused run's drift must stay within 3x stock's
    (the project's rule for reduced precision, tests/tolerances.py), for losses and parameters."""
    stock64, _ = make_pair(name, torch.float64)
    stock32, fused32 = make_pair(name, torch.float32)
    ref_losses = _sgd_run(stock64, torch.float64, 1e-4)
    stock_losses = _sgd_run(stock32, torch.float32, 1e-4)
    fused_losses = _sgd_run(fused32, torch.float32, 1e-4)
    torch.testing.assert_close(fused_losses[0], stock_losses[0], rtol=1e-4, atol=0)
    loss_err = lambda losses: ((losses - ref_losses).abs() / ref_losses.abs()).max().item()
    assert loss_err(fused_losses) <= 3 * loss_err(stock_losses) + 1e-5, \
        f"loss drift {loss_err(fused_losses):.3g} vs stock float32's {loss_err(stock_losses):.3g}"
    reference = stock64.state_dict()
    fused_err, stock_err = _worst_rel_error(fused32.state_dict(), reference), _worst_rel_error(stock32.state_dict(), reference)
    assert fused_err <= 3 * stock_err + 1e-5, f"state drift {fused_err:.3g} vs stock float32's {stock_err:.3g}"


@pytest.mark.parametrize("name", BUILDERS)
def test_state_dict_round_trips_between_fused_and_stock(name):
    stock, fused = make_pair(name)
    other = randomize(BUILDERS[name](), seed=5)
    x = images(2, 64)
    # stock checkpoint -> fused model, and the fold follows the loaded statistics.
    fused.load_state_dict(other.state_dict())
    fused.eval(), other.eval(), stock.eval()
    with torch.no_grad():
        assert_rel_close(fused(x), other(x), 1e-5, "stock -> fused")
    # fused checkpoint -> stock model.
    stock.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert_rel_close(stock(x), fused(x), 1e-5, "fused -> stock")
    # Keys agree both ways with strict loading, including num_batches_tracked.
    assert fused.state_dict().keys() == other.state_dict().keys()


@pytest.mark.parametrize("name", BUILDERS)
def test_optimizer_built_before_fusing_updates_the_fused_model(name):
    torch.manual_seed(0)
    model = randomize(BUILDERS[name]()).double()  # float64: a stale fold cannot hide in rounding
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    before = {id(p) for p in model.parameters()}
    fuse(model)
    assert {id(p) for p in model.parameters()} == before
    x, target = images(4, 48, torch.float64), torch.randint(0, 1000, (4,))
    for net, o in ((model, opt), (reference, ref_opt)):
        net.train()
        o.zero_grad()
        nn.functional.cross_entropy(net(x), target).backward()
        o.step()
        net.eval()
    # The eval fold uses the parameters the step just changed (no stale fold).
    with torch.no_grad():
        assert_rel_close(model(x), reference(x), 1e-9, f"{name} eval after a step")
    for p, q in zip(opt.param_groups[0]["params"], model.parameters()):
        assert p is q


@pytest.mark.parametrize("name", BUILDERS)
def test_unfuse_restores_the_stock_modules(name):
    torch.manual_seed(0)
    model = randomize(BUILDERS[name]()).eval()
    types = [type(m) for m in model.modules()]
    tensors = list(model.state_dict(keep_vars=True).values())
    x = images(2, 64)
    with torch.no_grad():
        expected = model(x)
    fuse(model)
    model.train()  # a mode change while fused must carry over
    model.eval()
    assert unfuse(model) is model
    assert [type(m) for m in model.modules()] == types
    assert all(a is b for a, b in zip(model.state_dict(keep_vars=True).values(), tensors))
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_unfuse_keeps_modules_replaced_while_fused():
    model = fuse(randomize(regnet("RegNetX-400MF")))
    new_bn = nn.BatchNorm2d(model.stem.bn.num_features)
    model.stem.bn = new_bn  # e.g. what a BN conversion does to the fused model's children
    unfuse(model)
    assert type(model.stem).__name__ == "Stem" and model.stem.bn is new_bn


def test_train_mode_uses_batch_statistics_and_updates_running_stats():
    stock, fused = make_pair("ours_regnety_400mf")
    exact = copy.deepcopy(stock).double()
    x = images(4, 48)
    stock.train(), fused.train(), exact.train()
    with torch.no_grad():
        assert_rel_close(fused(x), stock(x), 1e-4, "train-mode forward")
        exact(x.double())
    # float32 running statistics after 20 layers differ from stock's by rounding (~1e-5 relative,
    # about stock's own distance from float64), so each is held to stock's float32 error.
    for (key, ours), (_, ref), (_, ref64) in zip(fused.state_dict().items(), stock.state_dict().items(),
                                                 exact.state_dict().items()):
        if "running" in key:
            stock_err = (ref.double() - ref64).abs().max().item()
            assert_rel_close(ours, ref64, 3 * stock_err / ref64.abs().max().item() + 2e-6, key)
    # Only BN layers in eval mode (a frozen-BN fine-tune) use running statistics again.
    stock.stem.bn.eval(), fused.stem.bn.eval()
    with torch.no_grad():
        assert_rel_close(fused(x), stock(x), 1e-4, "frozen stem BN")


def test_non_regnet_model_swaps_only_what_matches_and_says_so():
    torch.manual_seed(0)
    model = randomize(torchvision.models.resnet18(weights=None)).eval()
    x = images(2, 64)
    with torch.no_grad():
        expected = model(x)
    model, report = fuse(model, report=True)
    # Only the downsample shortcuts (Sequential(Conv2d, BatchNorm2d)) and the classifier are
    # known patterns; BasicBlock's forward is not, so its layers stay stock and are listed.
    assert report.swapped == [(f"layer{i}.0.downsample", "Sequential", "FusedConvBNAct") for i in (2, 3, 4)] \
        + [("fc", "Linear", "FusedLinear")]
    left = dict(report.left_stock)
    assert left["conv1"] == "Conv2d" and left["bn1"] == "BatchNorm2d" and "layer1.0.conv2" in left
    assert not any(path.startswith("layer2.0.downsample") for path in left)
    text = str(report)
    assert "swapped 4 module(s)" in text and "layer1.0.conv1" in text
    with torch.no_grad():
        assert_rel_close(model(x), expected, 1e-5, "resnet18")


def test_unrecognised_variants_are_left_stock_with_a_reason():
    # A Sequential conv-BN-ReLU with a dilated conv: a known shape, but not fusable.
    seq = nn.Sequential(nn.Conv2d(4, 8, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    holder = nn.Sequential(seq)
    _, report = fuse(holder, report=True)
    assert report.swapped == [] and isinstance(holder[0], nn.Sequential)
    assert report.notes and "dilation" in report.notes[0][1]


def test_a_sequential_conv_bn_relu_is_fused_and_a_root_pattern_is_returned():
    torch.manual_seed(0)
    seq = randomize(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=True), nn.BatchNorm2d(8),
                                  nn.ReLU())).eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        expected = seq(x)
    fused = fuse(seq)
    assert isinstance(fused, FusedConvBNAct) and fused.relu
    assert list(fused.state_dict()) == list(seq.state_dict())
    with torch.no_grad():
        assert_rel_close(fused(x), expected, 1e-5, "sequential")
    assert unfuse(fused) is seq


class _InPlaceResidual(nn.Module):
    """conv + BN, then the input added into the output in place (torchvision's MobileNetV3)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x):
        y = self.proj(x)
        y += x
        return y


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_an_in_place_add_into_a_fused_output_without_relu_keeps_the_backward(mode):
    # The operators saved their output for ReLU's mask even without ReLU, so the in-place add
    # made autograd refuse the backward.
    torch.manual_seed(0)
    stock = randomize(_InPlaceResidual()).double()
    fused = fuse(copy.deepcopy(stock))
    assert isinstance(fused.proj, FusedConvBNAct) and not fused.proj.relu
    grads = []
    for model in (stock, fused):
        getattr(model, mode)()
        x = torch.randn(2, 8, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)
        (model(x) ** 2).sum().backward()
        grads.append([x.grad] + [p.grad for p in model.parameters()])
    for ours, expected in zip(*grads):
        torch.testing.assert_close(ours, expected)


def test_fusing_twice_changes_nothing():
    model = fuse(regnet("RegNetX-400MF"))
    _, report = fuse(model, report=True)
    assert report.swapped == []
    assert all(not isinstance(m, FusedResBottleneck) for m in unfuse(model).modules())


def test_verify_runs_the_selfcheck_and_refuses_when_it_fails(monkeypatch):
    from regnet_ext import selfcheck

    monkeypatch.setattr(fuse_model, "_SELFCHECK_RESULTS", {})
    calls = []
    real_run = selfcheck.run

    def counting_run(device, dtypes):
        calls.append((torch.device(device).type, tuple(dtypes)))
        return real_run(device, dtypes)

    monkeypatch.setattr(selfcheck, "run", counting_run)
    model = fuse(regnet("RegNetX-400MF"), verify=True)
    assert isinstance(model.s1.b1, FusedResBottleneck)
    fuse(regnet("RegNetX-400MF"), verify=True)
    assert calls == [("cpu", (torch.float32,))]  # once per process

    failing = selfcheck.CheckResult("conv_bn_act_eval", "float64", False, 1.0, 1e-9, "wrong")
    monkeypatch.setattr(selfcheck, "run", lambda device, dtypes: [failing])
    stock = regnet("RegNetX-400MF").double()
    with pytest.raises(RuntimeError, match="self-check failed.*conv_bn_act_eval"):
        fuse(stock, verify=True)
    assert not any(isinstance(m, FusedResBottleneck) for m in stock.modules())


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        fuse("resnet")
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        unfuse(None)
    with pytest.raises(ValueError, match="bn has 4 features"):
        FusedConvBNAct(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(4), relu=True)
    with pytest.raises(ValueError, match="shortcut must be"):
        FusedResBottleneck({}, shortcut="sum", final_relu=True)
    layer = fuse(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)))
    with pytest.raises(ValueError, match=r"x must be \[N, 3, H, W\]"):
        layer.eval()(torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer.train()(torch.randn(1, 3, 1, 1))


@pytest.mark.parametrize("num_classes", [5, 0])
def test_timm_reset_classifier_works_on_a_fused_model(num_classes):
    # timm's fine-tuning step; the fused head had no reset() (AttributeError).
    stock = randomize(_timm_regnety_004()).eval()
    fused = fuse(copy.deepcopy(stock))
    for model in (stock, fused):
        model.reset_classifier(num_classes)
    if num_classes:
        fused.head.fc.load_state_dict(stock.head.fc.state_dict())
    assert fused.head_hidden_size == stock.head_hidden_size
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = stock(x)
        assert expected.shape[1] == (num_classes or stock.num_features)
        assert_rel_close(fused(x), expected, 1e-5, f"reset_classifier({num_classes})")
    assert type(unfuse(fused).head.fc) is type(stock.head.fc)


def test_a_batchnorm_with_its_own_activation_is_not_fused_outside_timm_layers():
    timm_layers = pytest.importorskip("timm.layers")
    seq = nn.Sequential(nn.Conv2d(4, 8, 1, bias=False), timm_layers.BatchNormAct2d(8, act_layer=nn.ReLU))
    _, report = fuse(nn.Sequential(seq), report=True)
    assert report.swapped == [] and "activation of its own" in report.notes[0][1]


def test_patterns_holding_hooked_modules_stay_stock_and_the_hooks_still_run():
    torch.manual_seed(0)
    model = randomize(regnet("RegNetY-400MF")).eval()
    seen = []
    model.s1.b1.b.conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.s2.b1.register_forward_pre_hook(lambda m, i: seen.append("s2.b1"))
    x = images(1, 64)
    with torch.no_grad():
        expected = model(x)
    seen.clear()
    model, report = fuse(model, report=True)
    notes = dict(report.notes)
    assert "s1.b1.b.conv has a forward/backward hook" in notes["s1.b1"]
    assert "s1.b1.b.conv has a forward/backward hook" in notes["s1.b1.b"]
    assert "s2.b1 has a forward/backward hook" in notes["s2.b1"]
    swapped = {path for path, _, _ in report.swapped}
    # The hooked block's other parts are fused one by one; the hooked layer is not.
    assert {"s1.b1.a", "s1.b1.c", "s1.b1.se", "s2.b1.a", "s2.b1.b", "s2.b1.c", "s2.b2"} <= swapped
    assert "s1.b1.b" not in swapped and dict(report.left_stock)["s1.b1.b.conv"] == "Conv2d"
    with torch.no_grad():
        assert_rel_close(model(x), expected, 1e-5, "fused around hooks")
    assert seen == [torch.Size([1, 48, 16, 16]), "s2.b1"]


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_empty_batch_gives_what_the_stock_model_gives(name, mode):
    # Our operators refuse empty tensors; the fused layers hand an empty batch to the stock
    # modules they hold, as in a detection pipeline whose crop list came back empty.
    stock, fused = (m.train(mode == "train") for m in make_pair(name))
    x = images(0, 64)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            expected, actual = stock(x), fused(x)
        assert actual.shape == expected.shape == (0, 1000)
    for (key, s), f in zip(stock.state_dict().items(), fused.state_dict().values()):
        assert torch.equal(s, f), key


@pytest.mark.parametrize("name", ["ours_regnety_400mf", "torchvision_regnet_y_400mf"])
def test_a_wrong_channel_count_is_refused_naming_the_channels(name):
    # One ValueError in every mode and layout: the operator's own would blame its weight, and
    # oneDNN's packed path said "could not create a primitive descriptor".
    _, fused = make_pair(name)
    for channels in (1, 4):
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, channels, 64, 64).contiguous(memory_format=layout)
            for train, grad in ((False, False), (False, True), (True, True)):
                with torch.set_grad_enabled(grad), pytest.raises(
                        ValueError, match=rf"x must be \[N, 3, H, W\] .*got shape \[2, {channels}, 64, 64\]"):
                    fused.train(train)(x)
