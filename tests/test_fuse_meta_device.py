"""A fused model on the meta device (moved there, or built there and then fused) runs like the
stock one: meta outputs of the stock model's shapes, through the operators' fake kernels."""
import pytest
import torch

from regnet_ext.models import regnet
from regnet_ext.nn import fuse
from test_fuse import BUILDERS, make_pair

NAMES = ["ours_regnety_400mf", "ours_regnetx_400mf", "torchvision_regnet_y_400mf"]


def _assert_meta_like_stock(stock, fused):
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.empty(2, 3, 64, 64, device="meta").contiguous(memory_format=layout)
        for mode, grad in (("eval", False), ("eval", True), ("train", True)):
            stock.train(mode == "train"), fused.train(mode == "train")
            with torch.set_grad_enabled(grad):
                expected, actual = stock(x), fused(x)
            assert actual.is_meta and actual.shape == expected.shape == (2, 1000), (layout, mode, grad)
            assert actual.dtype == expected.dtype


@pytest.mark.parametrize("name", NAMES)
def test_a_fused_model_moved_to_meta_runs_like_stock(name):
    stock, fused = make_pair(name)
    _assert_meta_like_stock(stock.to("meta"), fused.to("meta"))


# (torchvision's builders cannot run under torch.device("meta"): they read widths back with .tolist())
@pytest.mark.parametrize("name", ["ours_regnety_400mf", "ours_regnetx_400mf"])
def test_a_model_built_on_meta_and_then_fused_runs_like_stock(name):
    with torch.device("meta"):
        stock, fused = BUILDERS[name](), BUILDERS[name]()
    fuse(fused)
    _assert_meta_like_stock(stock, fused)


def test_a_meta_model_backward_reaches_meta_gradients():
    with torch.device("meta"):
        fused = fuse(regnet("RegNetY-400MF"))
    fused.train()(torch.empty(2, 3, 64, 64, device="meta")).sum().backward()
    weight = fused.stem.conv.weight
    assert weight.grad is not None and weight.grad.is_meta and weight.grad.shape == weight.shape
