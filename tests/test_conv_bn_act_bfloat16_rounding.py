"""The CPU passes convert float lanes to bfloat16 with integer vector operations
(csrc/cpu/channel_passes.h): the result must be PyTorch's own rounding of the same float values
(round to nearest even, NaN kept), on the 512-bit, 256-bit and single-channel paths alike.
A tolerance test would pass truncation too; this one compares the bits."""
import torch

import regnet_ext.ops  # noqa: F401  (registers the operators)

# 43 channels: two 512-bit vectors of 16 floats, one 256-bit vector of 8, three single channels.
CHANNELS = 43


def _train_forward(x, weight, gamma, beta):
    # The training operator itself: it also returns z (the conv output) and the batch statistics.
    return torch.ops.regnet_ext.conv_bn_act_train(x, weight, None, gamma, beta, None, 1, 0, 1, 1e-5, False)


def _expected(z, mean, var, gamma, beta):
    scale = gamma.float() / torch.sqrt(var + 1e-5)
    shift = beta.float() - mean * scale
    return (z.float() * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).bfloat16()


def _inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, 9, 9, generator=gen).bfloat16().contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(CHANNELS, 24, 1, 1, generator=gen) / 5).bfloat16()
    gamma = (torch.rand(CHANNELS, generator=gen) + 0.5).bfloat16()
    beta = torch.randn(CHANNELS, generator=gen).bfloat16()
    return x, weight, gamma, beta


def test_bfloat16_outputs_round_to_nearest_even():
    x, weight, gamma, beta = _inputs(0)
    y, z, mean, var = _train_forward(x, weight, gamma, beta)
    want = _expected(z, mean, var, gamma, beta)
    got_bits = y.contiguous().view(torch.int16).int()
    want_bits = want.contiguous().view(torch.int16).int()
    differ = got_bits != want_bits
    # Float32 contraction (z * scale + shift as one FMA) may move a value across a rounding
    # midpoint now and then; truncation instead of rounding would change about half of them.
    assert differ.float().mean().item() < 0.01, f"{differ.sum().item()} of {y.numel()} values differ"
    assert (got_bits - want_bits).abs().max().item() <= 1


def test_bfloat16_nan_stays_nan():
    x, weight, gamma, beta = _inputs(1)
    x[1, 3, 4, 5] = float("nan")  # one pixel: NaN in every channel's conv output and statistics
    y, z, mean, var = _train_forward(x, weight, gamma, beta)
    assert torch.isnan(y.float()).all()
    assert torch.equal(torch.isnan(y.float()), torch.isnan(_expected(z, mean, var, gamma, beta).float()))
