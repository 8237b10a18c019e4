"""regnet_ext.profile and profile_stock_and_fused profile copies: the caller's model keeps its
mode, memory format, module types, parameters, gradients and BN statistics."""
import pytest
import torch

from regnet_ext.profiling import profile, profile_stock_and_fused
from test_profiler import _tiny


def _snapshot(model):
    return (model.training, [type(m) for m in model.modules()],
            {k: v.clone() for k, v in model.state_dict().items()},
            [p.is_contiguous() for p in model.parameters()], [p.grad for p in model.parameters()])


def _assert_unchanged(model, before):
    training, types, state, contiguous, grads = before
    assert model.training == training
    assert [type(m) for m in model.modules()] == types
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [p.is_contiguous() for p in model.parameters()] == contiguous
    assert all(p.grad is None for p in model.parameters()) and all(g is None for g in grads)


@pytest.mark.parametrize("call", ["profile", "profile_stock_and_fused"])
def test_profiling_leaves_the_callers_model_as_it_was(call):
    torch.manual_seed(0)
    model = _tiny().train()
    before = _snapshot(model)
    kwargs = dict(iters=1, warmup=0, train=True, count_kernels=False)
    if call == "profile":
        profile(model, (2, 3, 32, 32), fused=True, **kwargs)
    else:
        profile_stock_and_fused(model, (2, 3, 32, 32), **kwargs)
    _assert_unchanged(model, before)
