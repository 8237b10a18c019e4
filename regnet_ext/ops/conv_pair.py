"""conv_pair_relu: a bottleneck's 1x1 conv and grouped 3x3 conv, BN folded, for CPU inference.

The fused modules call it (regnet_ext.nn.conv_pair) where it applies; it is public so that it
can be tested and benchmarked on its own. See csrc/cpu/conv_pair.cpp for why it exists."""
import torch

from ._cpu_only import require_cpu, require_no_grad


def conv_pair_relu(x, weight_a, bias_a, weight_b, bias_b, *, stride=1, groups=1):
    """y = relu(conv2d(relu(conv2d(x, weight_a) + bias_a), weight_b, stride=stride, padding=1,
    groups=groups) + bias_b) for a float32 CPU x; weight_a [C, C_in, 1, 1], weight_b
    [C, C/groups, 3, 3] with 8 or 16 channels per group, biases [C]. The output is channels_last.
    Inference only: no autograd."""
    require_cpu("conv_pair_relu", x)
    require_no_grad("conv_pair_relu", x, weight_a, bias_a, weight_b, bias_b)
    return torch.ops.regnet_ext.conv_pair_relu(x, weight_a, bias_a, weight_b, bias_b, stride, groups)


@torch.library.register_fake("regnet_ext::conv_pair_relu")
def _conv_pair_relu_fake(x, weight_a, bias_a, weight_b, bias_b, stride, groups):
    out = [x.shape[0], weight_a.shape[0], (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1]
    return torch.empty(out, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
