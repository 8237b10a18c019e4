"""Weight interchange with torchvision, timm and pycls: key mapping, strict loading, and the same
outputs as the other implementation (eval mode, random weights and BN statistics, no downloads)."""
import re
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from regnet_ext.models import STANDARD_MODELS, AnyNet, canonical_name, regnet, regnet_spec
from regnet_ext.models.interchange import (
    LAYOUTS, TORCHVISION_BUILDERS, check_architecture, convert_keys, from_pycls, from_timm,
    from_torchvision, load_checked, load_pycls, load_timm, load_torchvision, spec_from_state_dict,
    timm_name, timm_spec, to_pycls, to_timm, to_timm_model, to_torchvision, to_torchvision_model,
    torchvision_spec)
from tolerances import assert_close_to_reference, tolerances

torchvision = pytest.importorskip("torchvision")

# RegNetY-128GF: 644M parameters, three copies (~8 GB), ~7 s of CPU time; the others take < 2 s.
SLOW_TORCHVISION = {"regnet_y_128gf"}
TIMM_STANDARD = [
    "regnetx_002", "regnetx_004", "regnetx_006", "regnetx_008", "regnetx_016", "regnetx_032",
    "regnetx_040", "regnetx_064", "regnetx_080", "regnetx_120", "regnetx_160", "regnetx_320",
    "regnety_002", "regnety_004", "regnety_006", "regnety_008", "regnety_016", "regnety_032",
    "regnety_040", "regnety_064", "regnety_080", "regnety_120", "regnety_160", "regnety_320",
]
TIMM_TV = ["regnetx_004_tv", "regnety_008_tv", "regnety_080_tv"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are small at 64x64: one thread does the work without the OpenMP spinning
    that makes a shared 2-core machine crawl; restored afterwards for the other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _params(names, slow):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def randomize_(module, seed=0):
    """Random BN affine parameters and running statistics, and random biases, so that every
    tensor of the state_dict matters for the output (conv weights keep their random init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=g)))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.2, generator=g)
    return module.eval()


def image(seed=1):
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def assert_same_outputs(actual, expected, name):
    assert actual.shape == expected.shape
    assert expected.abs().max() > 0.1, f"{name}: degenerate reference output"
    torch.testing.assert_close(actual, expected, **tolerances(torch.float32),
                               msg=lambda m: f"{name}: {m}")


def assert_same_state(actual, expected):
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


# ---------------------------------------------------------------- key mapping, no models needed

@pytest.mark.parametrize("layout", sorted(set(LAYOUTS) - {"ours"}))
@pytest.mark.parametrize("name", ["RegNetY-200MF", "RegNetX-400MF"])
def test_key_mapping_round_trips_exactly(layout, name):
    ours = regnet(name).state_dict()
    theirs = convert_keys(ours, "ours", layout)
    assert len(theirs) == len(ours)
    back = convert_keys(theirs, layout, "ours")
    assert list(back) == list(ours)
    assert all(back[k] is ours[k] for k in ours)  # the same tensors: renaming copies nothing


def test_pycls_colour_flip_round_trips_and_touches_only_the_stem():
    ours = regnet("RegNetY-200MF").state_dict()
    pycls = to_pycls(ours)
    assert torch.equal(pycls["stem.conv.weight"], ours["stem.conv.weight"][:, [2, 1, 0]])
    assert pycls["s1.b1.f.a.weight"] is ours["s1.b1.a.conv.weight"]
    assert_same_state(from_pycls(pycls), ours)
    assert_same_state(from_pycls(to_pycls(ours, rgb_to_bgr=False), bgr_to_rgb=False), ours)
    # A pycls checkpoint is accepted whole: its "model_state" holds the weights.
    assert_same_state(from_pycls({"epoch": 3, "model_state": pycls}), ours)


def test_unknown_keys_are_refused_not_dropped():
    sd = to_torchvision(regnet("RegNetX-200MF").state_dict())
    with pytest.raises(ValueError, match=r"torchvision layout: \['extra\.weight'\]"):
        from_torchvision({**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="timm layout"):
        from_timm(sd)  # torchvision's names are not timm's
    with pytest.raises(ValueError, match=r"ours layout: \['s1\.b1\.a\.conv\.bias'\]"):
        to_timm({**regnet("RegNetX-200MF").state_dict(), "s1.b1.a.conv.bias": torch.zeros(24)})
    with pytest.raises(ValueError, match="source"):
        convert_keys(sd, "caffe2", "ours")
    with pytest.raises(TypeError, match="state_dict"):
        from_timm([("stem.conv.weight", torch.zeros(1))])


def test_bgr_flip_needs_a_three_channel_stem():
    four = AnyNet(replace(regnet_spec("RegNetX-200MF"), in_channels=4))
    with pytest.raises(ValueError, match="3-channel stem"):
        to_pycls(four.state_dict())


# ---------------------------------------------------------------- strict, explained loading

@pytest.mark.parametrize("builder, stage, theirs, ours", [
    ("regnet_y_800mf", "s2", 144, 128), ("regnet_x_400mf", "s4", 400, 384)])
def test_torchvision_weights_into_a_pycls_architecture_name_the_stage(builder, stage, theirs, ours):
    weights = from_torchvision(getattr(torchvision.models, builder)().state_dict())
    model = regnet(builder, rounding="pycls")
    with pytest.raises(ValueError,
                       match=rf"stage {stage}: width {theirs} in .*, {ours} in the model"):
        load_checked(model, weights, source="torchvision's weights")
    load_checked(regnet(builder, rounding="torchvision"), weights)  # the right architecture fits


def test_missing_unexpected_and_misshapen_tensors_are_reported():
    model = regnet("RegNetY-200MF")
    good = model.state_dict()
    missing = {k: v for k, v in good.items() if k != "s4.b3.se.expand.bias"}
    with pytest.raises(ValueError, match=r"missing keys 's4\.b3\.se\.expand\.bias'$"):
        check_architecture(model, missing)
    with pytest.raises(ValueError, match="unexpected keys"):
        check_architecture(model, {**good, "s1.b1.b.conv.bias": torch.zeros(24)})
    wrong = {**good, "head.fc.weight": torch.zeros(10, 368)}
    with pytest.raises(ValueError, match=r"'head\.fc\.weight': shape \(10, 368\)"):
        check_architecture(model, wrong)
    fewer_blocks = {k: v for k, v in good.items() if not k.startswith("s4.b7.")}
    with pytest.raises(ValueError,
                       match=r"stage s4: depth \(blocks\) 6 in the weights, 7 in the model"):
        check_architecture(model, fewer_blocks)


def test_errors_name_the_keys_as_the_users_file_has_them():
    theirs = torchvision.models.regnet_x_400mf().state_dict()
    key = "trunk_output.block2.block2-1.f.a.0.weight"
    missing = {k: v for k, v in theirs.items() if k != key}
    with pytest.raises(ValueError, match=rf"missing keys '{re.escape(key)}'$"):
        load_torchvision(missing)
    # The head is sized from fc.weight, so fc.bias is the tensor that does not fit.
    with pytest.raises(ValueError, match=r"shape mismatches: 'fc\.bias': \(1000,\) in torchvision's"):
        load_torchvision({**theirs, "fc.weight": torch.zeros(10, 400)})


def test_errors_reading_the_architecture_name_the_source_key_and_ours():
    theirs = torchvision.models.regnet_x_400mf(num_classes=10).state_dict()
    no_fc = {k: v for k, v in theirs.items() if k != "fc.weight"}
    with pytest.raises(ValueError,
                       match=r"missing 'fc\.weight' \(ours: 'head\.fc\.weight'\), needed for the classifier"):
        load_torchvision(no_fc)
    key = "trunk_output.block2.block2-0.f.c.0.weight"
    with pytest.raises(ValueError, match=rf"missing '{re.escape(key)}' \(ours: 's2\.b1\.c\.conv\.weight'\)"):
        load_torchvision({k: v for k, v in theirs.items() if k != key})
    # A classifier of another width than the last stage: the architecture check names it.
    ours = regnet("RegNetX-400MF", rounding="torchvision", num_classes=10)
    wrong_fc = from_torchvision({**theirs, "fc.weight": torch.zeros(10, 384)})
    with pytest.raises(ValueError, match=r"'fc\.weight' \(ours: 'head\.fc\.weight'\): shape \(10, 384\)"):
        check_architecture(ours, wrong_fc, layout="torchvision")
    timm_sd = to_timm(ours.state_dict())  # timm names the classifier as we do: one name
    with pytest.raises(ValueError, match=r"missing 'stem\.conv\.weight', needed"):
        spec_from_state_dict(from_timm({k: v for k, v in timm_sd.items() if k != "stem.conv.weight"}),
                             layout="timm")
    pycls_sd = to_pycls(ours.state_dict())
    with pytest.raises(ValueError, match=r"missing 's1\.b1\.f\.b\.weight' \(ours: 's1\.b1\.b\.conv\.weight'\)"):
        load_pycls({k: v for k, v in pycls_sd.items() if k != "s1.b1.f.b.weight"})


def test_spec_from_state_dict_rebuilds_the_architecture():
    for name in ("RegNetY-800MF", "RegNetX-8.0GF"):
        spec = regnet_spec(name, rounding="torchvision", num_classes=10)
        assert spec_from_state_dict(regnet(name, rounding="torchvision", num_classes=10)
                                    .state_dict()) == spec


# ---------------------------------------------------------------- torchvision

def test_every_torchvision_regnet_builder_is_covered():
    from torchvision.models import regnet as tv_regnet
    builders = [n for n in tv_regnet.__all__ if n.startswith("regnet_")]
    assert sorted(TORCHVISION_BUILDERS) == sorted(builders)


@pytest.mark.parametrize("builder", _params(TORCHVISION_BUILDERS, SLOW_TORCHVISION))
def test_torchvision_weights_give_torchvision_outputs_and_back(builder):
    theirs = randomize_(getattr(torchvision.models, builder)(weights=None))
    x = image()
    expected = outputs(theirs, x)
    ours = load_torchvision(theirs)
    # The architecture is our generator's, with torchvision's rounding.
    assert ours.spec == torchvision_spec(builder)
    assert ours.spec.name == (TORCHVISION_BUILDERS[builder] or "RegNetY-128GF")
    assert not ours.training
    assert_same_outputs(outputs(ours, x), expected, f"{builder} -> ours")
    back = to_torchvision_model(ours)
    assert isinstance(back, torchvision.models.RegNet)
    assert_same_state(back.state_dict(), theirs.state_dict())
    assert_same_outputs(outputs(back, x), expected, f"{builder} -> ours -> torchvision")
    # Copies, not views: changing ours leaves torchvision's model alone.
    with torch.no_grad():
        ours.head.fc.bias.add_(1.0)
    assert not torch.equal(ours.head.fc.bias, theirs.fc.bias)


def test_load_torchvision_by_name_and_from_a_state_dict():
    ours = load_torchvision("regnet_y_400mf", weights=None)
    assert ours.spec == torchvision_spec("regnet_y_400mf")
    theirs = randomize_(torchvision.models.regnet_x_400mf(num_classes=7))
    from_sd = load_torchvision(theirs.state_dict())
    assert from_sd.spec == regnet_spec("RegNetX-400MF", rounding="torchvision", num_classes=7)
    assert_same_outputs(outputs(from_sd, image()), outputs(theirs, image()), "state_dict")
    with pytest.raises(ValueError, match="builder"):
        load_torchvision("regnet_y_6_4gf", weights=None)


def test_torchvision_models_ours_cannot_reproduce_are_refused():
    from functools import partial
    odd_bn = torchvision.models.regnet_y_400mf(norm_layer=partial(nn.BatchNorm2d, eps=1e-3))
    with pytest.raises(ValueError, match="eps=0.001"):
        load_torchvision(odd_bn)
    with pytest.raises(ValueError, match="SiLU"):
        load_torchvision(torchvision.models.regnet_y_400mf(activation=nn.SiLU))
    with pytest.raises(TypeError, match="torchvision RegNet"):
        load_torchvision(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="got NoneType"):  # was an UnboundLocalError
        load_torchvision(None)


def test_load_timm_refuses_none_naming_what_it_takes():
    pytest.importorskip("timm")
    with pytest.raises(TypeError, match="timm RegNet.*got NoneType"):
        load_timm(None)


# ---------------------------------------------------------------- timm

@pytest.mark.parametrize("name", TIMM_STANDARD + TIMM_TV)
def test_timm_weights_give_timm_outputs_and_back(name):
    timm = pytest.importorskip("timm")
    theirs = randomize_(timm.create_model(name, pretrained=False))
    x = image()
    expected = outputs(theirs, x)
    ours = load_timm(theirs)
    # timm's standard models are pycls's architectures; its _tv variants torchvision's.
    rounding = "torchvision" if name.endswith("_tv") else "pycls"
    assert ours.spec == regnet_spec(name.removesuffix("_tv"), rounding=rounding) == timm_spec(name)
    assert_same_outputs(outputs(ours, x), expected, f"{name} -> ours")
    back = to_timm_model(ours)
    assert isinstance(back, timm.models.regnet.RegNet)
    assert back.pretrained_cfg["architecture"] == name
    assert_same_state(back.state_dict(), theirs.state_dict())
    assert_same_outputs(outputs(back, x), expected, f"{name} -> ours -> timm")


def test_timm_names_and_non_standard_models():
    timm = pytest.importorskip("timm")
    assert [timm_name(n) for n in STANDARD_MODELS] == TIMM_STANDARD
    assert set(TIMM_STANDARD + TIMM_TV) <= set(timm.list_models("regnet[xy]_*"))
    assert timm_name("RegNetY-1.6GF") == "regnety_016"
    assert timm_name("regnet_x_400mf", rounding="torchvision") == "regnetx_004_tv"
    assert timm_name("RegNetY-32GF", rounding="torchvision") == "regnety_320"  # no _tv needed
    assert timm_spec("regnety_032.ra_in1k") == regnet_spec("RegNetY-3.2GF")
    assert timm_spec("regnety_1280") is None
    by_name = load_timm("regnety_002", pretrained=False)
    assert by_name.spec == regnet_spec("RegNetY-200MF")
    # A custom architecture has no timm name to be found: it must be given.
    custom = regnet(w0=16, wa=12.0, wm=2.5, depth=6, group_width=8, se_ratio=0.25)
    with pytest.raises(ValueError, match="pass name="):
        to_timm_model(custom)
    with pytest.raises(ValueError, match="architecture mismatch .* stage s1"):
        to_timm_model(custom, name="regnety_002")


def test_timm_models_ours_cannot_reproduce_are_refused():
    timm = pytest.importorskip("timm")
    for name, message in [("regnetv_040", "PreBottleneck|final"), ("regnety_040_sgn", "GroupNorm")]:
        with pytest.raises(ValueError, match=message):
            load_timm(timm.create_model(name, pretrained=False))
    with pytest.raises(ValueError, match="dilated"):
        load_timm(timm.create_model("regnetx_002", pretrained=False, output_stride=16))


# ---------------------------------------------------------------- pycls

def pycls_reference_forward(sd, x):
    """pycls's RegNet in float64, written from its checkpoint's key names alone (every stage's
    first block has stride 2): an independent reading of the layout to_pycls produces."""
    sd = {k: v.double() for k, v in sd.items()}

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], training=False, eps=1e-5)

    x = F.relu(bn(F.conv2d(x.double(), sd["stem.conv.weight"], stride=2, padding=1), "stem.bn"))
    block_keys = (re.match(r"s(\d+)\.b(\d+)\.", k) for k in sd)
    blocks = sorted({(int(m.group(1)), int(m.group(2))) for m in block_keys if m})
    for stage, block in blocks:
        p, stride = f"s{stage}.b{block}.", 2 if block == 1 else 1
        w_b = sd[p + "f.b.weight"]
        y = F.relu(bn(F.conv2d(x, sd[p + "f.a.weight"]), p + "f.a_bn"))
        groups = w_b.shape[0] // w_b.shape[1]
        y = F.relu(bn(F.conv2d(y, w_b, stride=stride, padding=1, groups=groups), p + "f.b_bn"))
        if p + "f.se.f_ex.0.weight" in sd:
            gate = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), sd[p + "f.se.f_ex.0.weight"],
                                   sd[p + "f.se.f_ex.0.bias"]))
            y = y * torch.sigmoid(F.conv2d(gate, sd[p + "f.se.f_ex.2.weight"],
                                           sd[p + "f.se.f_ex.2.bias"]))
        y = bn(F.conv2d(y, sd[p + "f.c.weight"]), p + "f.c_bn")
        shortcut = (bn(F.conv2d(x, sd[p + "proj.weight"], stride=stride), p + "bn")
                    if p + "proj.weight" in sd else x)
        x = F.relu(y + shortcut)
    return F.linear(x.mean((2, 3)), sd["head.fc.weight"], sd["head.fc.bias"])


@pytest.mark.parametrize("name", ["RegNetY-200MF", "RegNetX-400MF"])
def test_to_pycls_matches_a_float64_reading_of_pycls_layout_with_bgr_input(name):
    ours = randomize_(regnet(name))
    rgb = image()
    expected = pycls_reference_forward(to_pycls(ours.state_dict()), rgb.flip(1))
    assert_close_to_reference(outputs(ours, rgb), expected, name=f"{name} (RGB) vs pycls (BGR)")
    kept = pycls_reference_forward(to_pycls(ours.state_dict(), rgb_to_bgr=False), rgb)
    assert_close_to_reference(outputs(ours, rgb), kept, name=f"{name} vs pycls, RGB kept")
    swapped = pycls_reference_forward(to_pycls(ours.state_dict()), rgb)  # wrong colour order
    assert (swapped - expected).abs().max() > 1e-3



@pytest.fixture
def pycls_regnet():
    """Builds pycls's own RegNet (pycls 0.1.1 from PyPI) for a standard model; pycls reads its
    configuration from a global, restored afterwards."""
    pytest.importorskip("pycls")
    import pycls.models.regnet as pycls_models
    from pycls.core.config import cfg

    saved = cfg.clone()

    def build(name):
        params = STANDARD_MODELS[canonical_name(name)]
        cfg.MODEL.NUM_CLASSES = 1000
        cfg.REGNET.DEPTH, cfg.REGNET.W0, cfg.REGNET.WA = params.depth, params.w0, params.wa
        cfg.REGNET.WM, cfg.REGNET.GROUP_W = params.wm, params.group_width
        cfg.REGNET.SE_ON = params.se_ratio > 0
        cfg.REGNET.SE_R = params.se_ratio or cfg.REGNET.SE_R
        return pycls_models.RegNet()

    yield build
    cfg.merge_from_other_cfg(saved)


@pytest.mark.parametrize("name", ["RegNetY-200MF", "RegNetX-400MF", "RegNetY-800MF"])
def test_pycls_weights_take_rgb_in_ours_and_bgr_in_pycls(pycls_regnet, name):
    theirs = randomize_(pycls_regnet(name))
    rgb = image()
    bgr = rgb.flip(1)
    expected = outputs(theirs, bgr)  # pycls's models are fed BGR images
    ours = load_pycls({"epoch": 10, "model_state": theirs.state_dict()})
    assert ours.spec == regnet_spec(name)  # pycls's architecture, pycls's rounding
    assert_same_outputs(outputs(ours, rgb), expected, f"pycls {name} -> ours (RGB)")
    as_is = load_pycls(theirs.state_dict(), bgr_to_rgb=False)
    assert_same_outputs(outputs(as_is, bgr), expected, f"pycls {name} -> ours (BGR kept)")
    # And back: our weights into pycls's own model, which then wants BGR.
    fresh = pycls_regnet(name)
    fresh.load_state_dict(to_pycls(ours.state_dict()), strict=True)
    assert_same_outputs(outputs(fresh, bgr), expected, f"ours -> pycls {name}")
