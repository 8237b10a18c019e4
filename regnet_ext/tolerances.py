"""The project's rule for reduced-precision results, shared by the tests and `regnet-ext selfcheck`:
an operator's error against a float64 reference may reach a small multiple of *plain PyTorch's*
error at the same precision, plus a floor of a few ulps at 1.0."""
import contextlib

import torch

ERROR_MULTIPLE = 3.0
ULP_AT_ONE = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}
FLOOR_ULPS = 4


def allowed_error(reference, plain, dtype):
    """The largest error a 16-bit result may have against its float64 ``reference``: ERROR_MULTIPLE
    times plain PyTorch's (``plain``, the same computation in ``dtype``), plus FLOOR_ULPS ulps at
    the reference's magnitude (at least 1)."""
    scale = max(reference.detach().abs().max().item(), 1.0) if reference.numel() else 1.0
    return ERROR_MULTIPLE * max_error(plain, reference) + FLOOR_ULPS * ULP_AT_ONE[dtype] * scale


def max_error(actual, reference):
    """Largest absolute difference, computed in float64 on the CPU."""
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().double().cpu() - reference.detach().double().cpu()).abs().max().item()


@contextlib.contextmanager
def full_float32():
    """Runs float32 convolutions and matmuls in full float32 on CUDA, restoring the flags after.

    cuDNN's float32 convolutions use TF32 (10-bit mantissa) by default, in stock PyTorch and in the
    convolutions our CUDA operators hand to cuDNN alike; a float32 check against a float64 reference
    must turn that off, or it measures TF32's rounding rather than the kernels."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def relu_with_mask(y, mask=None):
    """ReLU, or where `mask` (y > 0 of the result under test) is given, y * mask: a reference that
    takes ReLU's branch where the tested kernel took it. Where y is within a rounding of 0, a 16-bit
    result and the float64 reference fall on either side, and the flip moves a gradient by O(1)."""
    return torch.relu(y) if mask is None else y * mask.to(y.device)
