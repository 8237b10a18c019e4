"""Activation checkpointing (torch.utils.checkpoint) of a fused model's stages: running
statistics, batch counters and gradients as the stock model's, which update BN twice per step
(forward and recomputation). Non-reentrant checkpointing stops recomputing once a segment has
saved as many tensors as in the forward; our running-statistics update follows the training
operator's saves, so the fused layers save one more tensor after it."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from regnet_ext.ops import conv_bn_act
from test_fuse import images, make_pair


def _checkpointed_step(model, x, use_reentrant, early_stop):
    stages = [m for n, m in model.named_children() if n in ("s1", "s2", "s3", "s4")]
    with set_checkpoint_early_stop(early_stop):
        h = model.stem(x)
        for stage in stages:
            h = checkpoint(stage, h, use_reentrant=use_reentrant)
        model.head(h).sum().backward()


@pytest.mark.parametrize("use_reentrant,early_stop", [(False, True), (False, False), (True, True)])
def test_checkpointed_stages_update_running_statistics_as_stock_does(use_reentrant, early_stop):
    stock, fused = make_pair("ours_regnety_400mf", torch.float64)
    x = images(2, 64, torch.float64).requires_grad_(use_reentrant)
    for model in (stock, fused):
        _checkpointed_step(model.train(), x, use_reentrant, early_stop)
    for (key, s), f in zip(stock.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(f, s, rtol=1e-9, atol=1e-12, msg=key)
    assert stock.s1.b1.c.bn.num_batches_tracked.item() == 2
    for (key, s), f in zip(stock.named_parameters(), fused.parameters()):
        torch.testing.assert_close(f.grad, s.grad, rtol=1e-7, atol=1e-10, msg=key)


def test_conv_bn_act_last_in_a_checkpoint_updates_running_statistics_twice():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 8, 3, padding=1, bias=False).double(), nn.BatchNorm2d(8).double()
    ours = copy.deepcopy(bn)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)

    def stock(x):
        return torch.relu(bn(conv(x)))

    def fused(x):
        return conv_bn_act(x, conv.weight, ours.weight, ours.bias, ours.running_mean, ours.running_var,
                           training=True, num_batches_tracked=ours.num_batches_tracked)

    for fn in (stock, fused):
        checkpoint(fn, x, use_reentrant=False).sum().backward()
    assert ours.num_batches_tracked.item() == bn.num_batches_tracked.item() == 2
    torch.testing.assert_close(ours.running_mean, bn.running_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours.running_var, bn.running_var, rtol=1e-9, atol=1e-12)
