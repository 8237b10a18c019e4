"""oneDNN's weight gradient of a channels_last stride-2 1x1 conv corrupts the heap in torch
2.14.1 when the input has fewer channels than oneDNN's channel block (uxlfoundation/oneDNN#6035;
8 -> 16 channels, batch 3, 14x14: stock eager's backward segfaults within 100 steps under
MALLOC_CHECK_=3). Below 32 input channels conv_bn_act takes that gradient from the stride-1
kernel over the subsampled input instead (csrc/cpu/conv_bn_act_backward.cpp). These run its
training step on both sides of that line in a child process with glibc's heap checks on and
expect a clean exit and gradients equal to a float64 reference."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conv_bn_act_reference import make_case
from test_conv_bn_act import _run_and_compare

CHILD = textwrap.dedent("""
    import sys
    import torch
    from regnet_ext.ops import conv_bn_act
    cl = torch.channels_last
    c_in = int(sys.argv[1])
    for step in range(100):
        x = torch.randn(3, c_in, 14, 14).contiguous(memory_format=cl).requires_grad_()
        w = torch.randn(16, c_in, 1, 1).contiguous(memory_format=cl).requires_grad_()
        g, b = torch.rand(16, requires_grad=True), torch.randn(16, requires_grad=True)
        y = conv_bn_act(x, w, g, b, torch.zeros(16), torch.ones(16), stride=2, training=True, relu=False)
        y.backward(torch.randn_like(y))
        junk = [torch.randn(100) for _ in range(50)]  # allocations that would meet a corrupted heap
    print("clean")
""")


@pytest.mark.parametrize("c_in", [8, 32], ids=["subsampled", "onednn_strided"])
def test_strided_1x1_training_leaves_the_heap_intact(c_in):
    env = dict(os.environ, MALLOC_CHECK_="3")
    done = subprocess.run([sys.executable, "-c", CHILD, str(c_in)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("c_in", [8, 24, 32, 48])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_strided_1x1_gradients_on_both_paths_match_float64(c_in, training):
    for batch, size in ((3, 14), (2, 15)):
        case = make_case(batch, c_in, 16, size, 1, 2, 1, channels_last=True, residual=False, seed=c_in)
        _run_and_compare(case, stride=2, groups=1, training=training, relu=False)
