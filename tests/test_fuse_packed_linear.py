"""FusedLinear, the classifier with a oneDNN-packed weight for CPU inference
(regnet_ext/nn/folded_inference.py PackedLinear): swapped in by fuse(), equal to nn.Linear,
never stale after the weight changes, and left alone where it does not apply."""
import copy

import pytest
import torch
from torch import nn

from regnet_ext.models import regnet
from regnet_ext.nn import FusedLinear, fuse, unfuse
from regnet_ext.nn import folded_inference
from test_fuse import assert_rel_close, pickled_copy

pytestmark = pytest.mark.skipif(
    not folded_inference._LINEAR_AVAILABLE,
    reason="needs ATen built with oneDNN")


def _pair(bias=True, dtype=torch.float32):
    torch.manual_seed(0)
    stock = nn.Linear(440, 1000, bias=bias).to(dtype)
    if bias:
        with torch.no_grad():
            stock.bias.normal_()
    return stock, fuse(copy.deepcopy(stock))


def _x(batch=8, dtype=torch.float32, seed=1):
    return torch.randn(batch, 440, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_fuse_swaps_the_classifier_of_a_regnet_and_unfuse_restores_it():
    model = regnet("RegNetX-400MF")
    stock_fc = model.head.fc
    model, report = fuse(model, report=True)
    assert ("head.fc", "Linear", "FusedLinear") in report.swapped
    fc = model.head.fc
    assert isinstance(fc, FusedLinear) and isinstance(fc, nn.Linear)
    assert fc.weight is stock_fc.weight and fc.bias is stock_fc.bias
    assert [k for k in model.state_dict() if k.startswith("head.")] == ["head.fc.weight", "head.fc.bias"]
    new_weight = nn.Parameter(torch.randn_like(fc.weight))
    fc.weight = new_weight  # replaced after fusing (as load_state_dict(assign=True) does)
    unfuse(model)
    assert type(model.head.fc) is nn.Linear and model.head.fc is stock_fc
    assert model.head.fc.weight is new_weight


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 8, 33])
def test_no_grad_inference_takes_the_packed_path_and_matches_linear(batch, bias):
    stock, fused = _pair(bias)
    with torch.no_grad():
        fused(_x(8))  # packed for batch 8 first; other batches get packings of their own
        expected, actual = stock(_x(batch)), fused(_x(batch))
    assert fused._packed.batches == ((8,) if batch == 8 else (8, batch))
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert_rel_close(actual, expected, 1e-5, "packed linear")


def test_one_packing_per_batch_size_at_most_four():
    # oneDNN packs for one batch size: a packing reused at another ran slower than F.linear.
    stock, fused = _pair()
    with torch.no_grad():
        for batch in (1, 8, 1, 2, 3, 4):
            assert_rel_close(fused(_x(batch)), stock(_x(batch)), 1e-5, f"batch {batch}")
            if batch == 8:
                assert fused._packed.batches == (1, 8)
    assert fused._packed.batches == (8, 2, 3, 4)


def test_bfloat16_and_autocast():
    # Packed only where oneDNN runs bfloat16 on this CPU (AVX-512 or AVX-NE-CONVERT); elsewhere
    # the stock path, with the same results.
    packs = torch.bfloat16 in folded_inference._DTYPES
    stock, fused = _pair(dtype=torch.bfloat16)
    x = _x(8, torch.bfloat16)
    reference = nn.functional.linear(x.double(), stock.weight.double(), stock.bias.double())
    with torch.no_grad():
        actual, eager = fused(x), stock(x)
    assert actual.dtype == torch.bfloat16 and fused._packed.filled is packs
    eager_error = (eager.double() - reference).abs().max().item()
    assert (actual.double() - reference).abs().max().item() <= 4 * eager_error + 1e-3
    stock32, fused32 = _pair()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = stock32(_x(8)), fused32(_x(8))
    assert actual.dtype == expected.dtype == torch.bfloat16 and fused32._packed.filled is packs
    assert_rel_close(actual, expected, 2e-2, "autocast bfloat16")


def test_the_packing_follows_optimizer_steps_load_state_dict_and_in_place_edits():
    stock, fused = _pair()
    x = _x()
    with torch.no_grad():
        fused(x)
    opt = torch.optim.SGD(fused.parameters(), lr=0.5)
    fused(x).square().mean().backward()
    opt.step()
    stock.load_state_dict(fused.state_dict())
    with torch.no_grad():
        assert_rel_close(fused(x), stock(x), 1e-5, "after an optimizer step")
        fused.bias.add_(1.0)
        stock.bias.add_(1.0)
        assert_rel_close(fused(x), stock(x), 1e-5, "after an in-place bias edit")
    other = nn.Linear(440, 1000)
    fused.load_state_dict(other.state_dict(), assign=True)  # new storage, same version counter
    with torch.no_grad():
        assert_rel_close(fused(x), other(x), 1e-5, "after load_state_dict(assign=True)")


def test_not_taken_with_autograd_float64_or_other_ranks():
    stock, fused = _pair()
    x = _x().requires_grad_()
    fused(x).sum().backward()
    assert not fused._packed.filled and fused.weight.grad is not None and x.grad is not None
    with torch.no_grad():
        x3 = torch.randn(2, 5, 440)
        assert_rel_close(fused(x3), stock(x3), 1e-6, "3-D input")
        stock64, fused64 = stock.double(), fused.double()
        assert_rel_close(fused64(_x().double()), stock64(_x().double()), 1e-12, "float64")
    assert not fused._packed.filled


def test_copies_and_pickles_start_with_an_empty_cache():
    _, fused = _pair()
    x = _x()
    with torch.no_grad():
        expected = fused(x)
    clone = copy.deepcopy(fused)
    assert not clone._packed.filled
    loaded = pickled_copy(fused)
    with torch.no_grad():
        assert_rel_close(clone(x), expected, 1e-6, "deepcopy")
        assert_rel_close(loaded(x), expected, 1e-6, "pickled")
