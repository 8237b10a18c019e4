"""AnyNet/RegNet modules: names, structure, a float64 functional reference, channels_last,
autocast, initialisation, and running without the compiled extension."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from regnet_ext.models import (STANDARD_MODELS, AnyNet, AnyNetSpec, canonical_name, regnet,
                               regnet_spec)
from regnet_ext.models.layers import ConvBNAct, ResBottleneckBlock, SqueezeExcite
from tolerances import assert_close_to_reference

GOLDEN = json.loads((Path(__file__).parent / "data" / "regnet_golden.json").read_text())
GOLDEN_MODELS = {m["name"]: m for m in GOLDEN["models"]}


@pytest.mark.parametrize("spelling, name", [
    ("RegNetY-400MF", "RegNetY-400MF"), ("regnet_y_400mf", "RegNetY-400MF"),
    ("regnety_004", "RegNetY-400MF"), ("REGNETY-400MF", "RegNetY-400MF"),
    ("regnetx_032", "RegNetX-3.2GF"), ("regnet_x_1_6gf", "RegNetX-1.6GF"),
    ("RegNetX-1.6GF", "RegNetX-1.6GF"), ("regnet_y_8gf", "RegNetY-8.0GF"),
    ("RegNetY-8GF", "RegNetY-8.0GF"), ("regnetx_120", "RegNetX-12GF"),
    ("regnet_y_32gf", "RegNetY-32GF"), ("regnety_320", "RegNetY-32GF"),
    (" regnetx-200mf ", "RegNetX-200MF"),
])
def test_canonical_name_accepts_common_spellings(spelling, name):
    assert canonical_name(spelling) == name


def test_every_standard_name_round_trips():
    for name in STANDARD_MODELS:
        assert canonical_name(name) == name
        assert canonical_name(name.lower().replace("-", "_")) == name


@pytest.mark.parametrize("bad", ["RegNetY-500MF", "regnet_y_128gf", "resnet50", "regnetz_040",
                                 "regnety_004_tv", ""])
def test_unknown_names_list_the_valid_ones(bad):
    with pytest.raises(ValueError, match=r"^name: .*RegNetX-200MF.*RegNetY-32GF"):
        canonical_name(bad)


def test_regnet_spec_for_named_and_custom_models():
    spec = regnet_spec("regnety_004")
    g = GOLDEN_MODELS["RegNetY-400MF"]
    assert (list(spec.depths), list(spec.widths), list(spec.group_widths)) == (
        g["depths"], g["widths"], g["group_widths"])
    assert spec.se_ratio == 0.25 and spec.name == "RegNetY-400MF" and spec.num_classes == 1000
    with pytest.raises(ValueError, match="se_ratio: RegNetY-400MF has se_ratio=0.25, got 0.0"):
        regnet_spec("RegNetY-400MF", se_ratio=0.0)  # was kept at 0.25 silently
    assert regnet_spec("RegNetX-400MF", se_ratio=0.0) == regnet_spec("RegNetX-400MF")
    custom = regnet_spec(w0=48, wa=27.89, wm=2.09, depth=16, group_width=8, se_ratio=0.25,
                         num_classes=10)
    assert custom == regnet_spec("RegNetY-400MF", num_classes=10)  # name is not compared
    assert regnet_spec("RegNetY-800MF", rounding="torchvision").widths == (64, 144, 320, 784)


@pytest.mark.parametrize("kwargs, param", [
    (dict(name="RegNetX-400MF", w0=32), "w0"),
    (dict(name="RegNetX-400MF", se_ratio=0.25), "se_ratio"),
    (dict(name="RegNetX-400MF", bottleneck_multiplier=0.5), "bottleneck_multiplier"),
    (dict(name="RegNetX-400MF", rounding="half_up"), "rounding"),
    (dict(w0=48, wa=27.89, wm=2.09, depth=16), "group_width"),
    (dict(w0=48, wa=27.89, wm=2.09, depth=16, group_width=8, se_ratio=1.5), "se_ratio"),
    (dict(w0=44, wa=27.89, wm=2.09, depth=16, group_width=8), "w0"),
])
def test_regnet_spec_bad_arguments(kwargs, param):
    with pytest.raises(ValueError, match=rf"^{param}:"):
        regnet_spec(**kwargs)


def test_structure_follows_the_contract():
    model = regnet("RegNetY-400MF")
    spec = model.spec
    assert [n for n, _ in model.named_children()] == ["stem", "s1", "s2", "s3", "s4", "head"]
    assert isinstance(model.stem, ConvBNAct) and model.stem.conv.stride == (2, 2)
    for i, stage in enumerate(model.stages):
        names = [n for n, _ in stage.named_children()]
        assert names == [f"b{j + 1}" for j in range(spec.depths[i])]
    blocks = [b for stage in model.stages for b in stage]
    for module, block in zip(blocks, spec.blocks(), strict=True):
        assert isinstance(module, ResBottleneckBlock)
        assert module.b.conv.groups == block.inner_width // block.group_width
        assert module.b.conv.stride == (block.stride,) * 2
        assert isinstance(module.se, SqueezeExcite)
        assert module.se.reduce.out_channels == round(0.25 * block.w_in)
        assert (module.proj is not None) == (block.w_in != block.w_out or block.stride != 1)
        assert module.c.conv.out_channels == block.w_out
        assert isinstance(module.c.act, torch.nn.Identity)
        assert module.b.bn.eps == 1e-5 and module.b.bn.momentum == 0.1
    assert model.head.fc.in_features == spec.widths[-1] and model.head.fc.out_features == 1000
    assert all(m.se is None for stage in regnet("RegNetX-200MF").stages for m in stage)


def _reference_forward(spec, state, x, training):
    """The network the spec describes, written with functional ops from its state_dict."""
    def conv_bn(x, prefix, stride=1, groups=1, relu=True):
        w = state[f"{prefix}.conv.weight"]
        y = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)
        y = F.batch_norm(y, state[f"{prefix}.bn.running_mean"].clone(),
                         state[f"{prefix}.bn.running_var"].clone(), state[f"{prefix}.bn.weight"],
                         state[f"{prefix}.bn.bias"], training=training, momentum=0.1, eps=1e-5)
        return F.relu(y) if relu else y

    x = conv_bn(x, "stem", stride=2)
    w_in = spec.stem_width
    for i, (depth, width, bm, g, stride) in enumerate(zip(
            spec.depths, spec.widths, spec.bottleneck_multipliers, spec.group_widths,
            spec.strides)):
        for j in range(depth):
            p, s = f"s{i + 1}.b{j + 1}", stride if j == 0 else 1
            inner = round(width * bm)
            y = conv_bn(x, f"{p}.a")
            y = conv_bn(y, f"{p}.b", stride=s, groups=inner // g)
            if spec.se_ratio:
                z = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), state[f"{p}.se.reduce.weight"],
                                    state[f"{p}.se.reduce.bias"]))
                y = y * torch.sigmoid(F.conv2d(z, state[f"{p}.se.expand.weight"],
                                               state[f"{p}.se.expand.bias"]))
            y = conv_bn(y, f"{p}.c", relu=False)
            projected = w_in != width or s != 1
            short = conv_bn(x, f"{p}.proj", stride=s, relu=False) if projected else x
            x, w_in = F.relu(y + short), width
    return F.linear(x.mean((2, 3)), state["head.fc.weight"], state["head.fc.bias"])


def _randomise_bn(model):
    # Non-trivial BN statistics and affine parameters, so eval mode is a real test.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
        elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            m.bias.data.uniform_(-0.5, 0.5)


SMALL_SPECS = {
    "RegNetY-200MF": regnet_spec("RegNetY-200MF", num_classes=17),
    "RegNetX-200MF": regnet_spec("RegNetX-200MF", num_classes=17),
    # Inverted/standard bottlenecks, stride-1 stage, odd group widths, other stem.
    "anynet": AnyNetSpec(depths=(1, 2, 2), widths=(24, 48, 72), group_widths=(4, 6, 24),
                         bottleneck_multipliers=(2.0, 0.5, 1.0), strides=(1, 2, 2),
                         se_ratio=0.5, stem_width=16, in_channels=4, num_classes=5),
}


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("key", list(SMALL_SPECS))
def test_forward_matches_float64_functional_reference(key, training):
    spec = SMALL_SPECS[key]
    model = AnyNet(spec).double()
    _randomise_bn(model)
    model.train(training)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, spec.in_channels, 32, 40, dtype=torch.float64)
    out = model(x)
    assert out.shape == (2, spec.num_classes)
    assert_close_to_reference(out, _reference_forward(spec, state, x, training))
    if not training:  # (batch statistics of these tiny maps amplify float32 rounding)
        model32 = AnyNet(spec).eval()
        model32.load_state_dict(state)
        assert_close_to_reference(model32(x.float()), _reference_forward(spec, state, x, False))


@pytest.mark.parametrize("key", list(SMALL_SPECS))
def test_channels_last_matches_contiguous(key):
    spec = SMALL_SPECS[key]
    model = AnyNet(spec).eval()
    _randomise_bn(model)
    x = torch.randn(2, spec.in_channels, 48, 48)
    ref = _reference_forward(spec, {k: v.double() for k, v in model.state_dict().items()},
                             x.double(), training=False)
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    features = model_cl.forward_features(x_cl)
    assert features.is_contiguous(memory_format=torch.channels_last)
    assert_close_to_reference(model_cl(x_cl), ref)


def test_autocast_within_plain_bfloat16_error():
    spec = SMALL_SPECS["RegNetY-200MF"]
    model = AnyNet(spec).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 64, 64)
    state64 = {k: v.double() for k, v in model.state_dict().items()}
    ref = _reference_forward(spec, state64, x.double(), training=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    plain_bf16 = AnyNet(spec).eval().to(torch.bfloat16)
    plain_bf16.load_state_dict(model.state_dict())
    assert_close_to_reference(out, ref, plain_torch=plain_bf16(x.to(torch.bfloat16)),
                              name="autocast output")


def test_backward_reaches_every_parameter():
    model = AnyNet(SMALL_SPECS["anynet"]).train()
    x = torch.randn(2, 4, 32, 32)
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_reference_initialisation():
    torch.manual_seed(1)
    model = regnet("RegNetY-800MF")
    conv = model.s4.b2.b.conv  # large grouped conv: std uses k*k*C_out, not divided by groups
    expected = math.sqrt(2.0 / (9 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert model.head.fc.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert (model.head.fc.bias == 0).all()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
        if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
            assert (m.bias == 0).all()
    torch.manual_seed(1)
    again = regnet("RegNetY-800MF")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))


def test_models_run_without_the_compiled_extension():
    code = ("import sys; sys.modules['regnet_ext._C'] = None\n"
            "import torch; from regnet_ext.models import regnet\n"
            "m = regnet('regnetx_002', num_classes=3).eval()\n"
            "print(tuple(m(torch.randn(1, 3, 32, 32)).shape))\n"
            "assert 'regnet_ext._C' not in sys.modules or sys.modules['regnet_ext._C'] is None\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 3)"


def test_torchvision_rounding_builds_torchvision_architecture():
    tv_models = pytest.importorskip("torchvision.models")
    ours = regnet("RegNetY-800MF", rounding="torchvision")
    theirs = tv_models.regnet_y_800mf()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(theirs) == GOLDEN["torchvision"]["RegNetY-800MF"]["num_params"]
    # The same tensor shapes (the two modules order a block's layers differently).
    assert (sorted(tuple(p.shape) for p in ours.parameters())
            == sorted(tuple(p.shape) for p in theirs.parameters()))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_channels_last_autocast_within_plain_reduced_precision_error(dtype):
    spec = SMALL_SPECS["RegNetY-200MF"]
    model = AnyNet(spec).eval()
    _randomise_bn(model)
    x = torch.randn(4, 3, 96, 96)
    ref = _reference_forward(spec, {k: v.double() for k, v in model.state_dict().items()},
                             x.double(), training=False)
    model = model.cuda().to(memory_format=torch.channels_last)
    x_cuda = x.cuda().to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=dtype):
        out = model(x_cuda)
    assert out.dtype == dtype
    plain = AnyNet(spec).eval().cuda().to(dtype).to(memory_format=torch.channels_last)
    plain.load_state_dict(model.state_dict())
    assert_close_to_reference(out.cpu(), ref, plain_torch=plain(x_cuda.to(dtype)).cpu(),
                              name=f"autocast {dtype} output")
    # Training step under autocast: finite gradients everywhere.
    model.train()
    with torch.autocast("cuda", dtype=dtype):
        loss = model(x_cuda).float().square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
