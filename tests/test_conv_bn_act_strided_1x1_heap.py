"""oneDNN's weight gradient of a channels_last stride-2 1x1 conv corrupts the heap in torch
2.14.1 for some shapes (8 -> 16 channels, batch 3, 14x14: stock eager's backward segfaults within
100 steps under MALLOC_CHECK_=3). conv_bn_act takes that gradient from the stride-1 kernel over
the subsampled input instead (csrc/cpu/conv_bn_act_backward.cpp); this runs its training step
on that shape in a child process with glibc's heap checks on and expects a clean exit."""
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import torch
    from regnet_ext.ops import conv_bn_act
    cl = torch.channels_last
    for step in range(100):
        x = torch.randn(3, 8, 14, 14).contiguous(memory_format=cl).requires_grad_()
        w = torch.randn(16, 8, 1, 1).contiguous(memory_format=cl).requires_grad_()
        g, b = torch.rand(16, requires_grad=True), torch.randn(16, requires_grad=True)
        y = conv_bn_act(x, w, g, b, torch.zeros(16), torch.ones(16), stride=2, training=True, relu=False)
        y.backward(torch.randn_like(y))
        junk = [torch.randn(100) for _ in range(50)]  # allocations that would meet a corrupted heap
    print("clean")
""")


def test_strided_1x1_training_leaves_the_heap_intact():
    env = dict(os.environ, MALLOC_CHECK_="3")
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-2000:]
