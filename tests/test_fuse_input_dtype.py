"""A fused model refuses an input of another dtype than its parameters outside autocast, as the
stock model does (stock conv2d raises a RuntimeError), with an error naming both dtypes; under
CPU autocast (bfloat16) both run in autocast's dtype."""
import pytest
import torch

from regnet_ext.nn import FusedHead, FusedLinear, FusedResBottleneck, FusedSqueezeExcite
from test_fuse import images, make_pair

NAMES = ["ours_regnety_400mf", "torchvision_regnet_y_400mf"]
MODES = [("eval", False), ("eval", True), ("train", True)]


def _mismatch(got, expected):
    return rf"input x is {got} but the parameters are {expected}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_an_input_of_another_dtype_is_refused_as_stock_refuses_it(name, dtype):
    stock, fused = make_pair(name)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = images(2, 64, dtype).contiguous(memory_format=layout)
        for mode, grad in MODES:
            stock.train(mode == "train"), fused.train(mode == "train")
            with torch.set_grad_enabled(grad):
                with pytest.raises(RuntimeError):
                    stock(x)
                with pytest.raises(RuntimeError, match=_mismatch(dtype, torch.float32)):
                    fused(x)


def test_a_bfloat16_model_refuses_a_float32_input():
    stock, fused = make_pair("torchvision_regnet_y_400mf", torch.bfloat16)
    x = images(2, 64)
    with torch.no_grad(), pytest.raises(RuntimeError):
        stock.eval()(x)
    with torch.no_grad(), pytest.raises(RuntimeError, match=_mismatch(torch.float32, torch.bfloat16)):
        fused.eval()(x)


@pytest.mark.parametrize("name", NAMES)
def test_every_fused_module_checks_its_own_input(name):
    # The stem is the first to see a model's input; blocks (whose lean inference path calls
    # their layers without their forward), SE and the classifier check theirs too.
    _, fused = make_pair(name)
    block = next(m for m in fused.modules() if isinstance(m, FusedResBottleneck))
    se = next(m for m in fused.modules() if isinstance(m, FusedSqueezeExcite))
    linear = next(m for m in fused.modules() if isinstance(m, FusedLinear))
    reduce = se._modules[se._reduce_name]  # an nn.Conv2d or nn.Linear
    inputs = {block: torch.randn(2, block.part("a").conv_module.in_channels, 16, 16),
              se: torch.randn(2, getattr(reduce, "in_channels", None) or reduce.in_features, 8, 8),
              linear: torch.randn(2, linear.in_features)}
    heads = [m for m in fused.modules() if isinstance(m, FusedHead)]
    if heads:
        inputs[heads[0]] = torch.randn(2, linear.in_features, 4, 4)
    for module, x in inputs.items():
        for mode, grad in MODES:
            module.train(mode == "train")
            layouts = (torch.contiguous_format, torch.channels_last) if x.dim() == 4 else (torch.contiguous_format,)
            for layout in layouts:
                with torch.set_grad_enabled(grad), pytest.raises(
                        RuntimeError, match=_mismatch(torch.bfloat16, torch.float32)):
                    module(x.bfloat16().contiguous(memory_format=layout))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_under_cpu_autocast_mixed_dtypes_still_run_as_stock_does(name, input_dtype):
    stock, fused = make_pair(name)
    x = images(2, 64, input_dtype).contiguous(memory_format=torch.channels_last)
    for mode, grad in MODES:
        stock.train(mode == "train"), fused.train(mode == "train")
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            expected, actual = stock(x), fused(x)
        assert actual.dtype == expected.dtype == torch.bfloat16
        assert actual.shape == expected.shape
        assert torch.isfinite(actual).all()


@pytest.mark.parametrize("name", NAMES)
def test_under_cpu_autocast_a_float64_input_is_refused_as_stock_refuses_it(name):
    # Autocast casts no float64 tensor: stock layers meet the bfloat16 weights it cast and raise;
    # the fused model ran the whole network in float64 and failed at the classifier's matmul.
    stock, fused = make_pair(name)
    x = images(2, 64, torch.float64).contiguous(memory_format=torch.channels_last)
    for mode, grad in MODES:
        stock.train(mode == "train"), fused.train(mode == "train")
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            with pytest.raises(RuntimeError):
                stock(x)
            with pytest.raises(RuntimeError, match=r"input x is torch.float64 under torch.autocast\('cpu'\)"):
                fused(x)


def test_under_cpu_autocast_a_float16_input_runs_in_autocasts_dtype_from_the_stem_on():
    # Autocast casts float16 to bfloat16 as it does float32: the fused stem ran in float16.
    stock, fused = make_pair("torchvision_regnet_y_400mf")
    x = images(2, 64, torch.float16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.stem(x).dtype == stock.stem(x).dtype == torch.bfloat16
