"""The project's rule for reduced-precision results, shared by the tests and `regnet-ext selfcheck`:
an operator's error against a float64 reference may reach a small multiple of *plain PyTorch's*
error at the same precision, plus a floor of a few ulps at 1.0."""
import torch

ERROR_MULTIPLE = 3.0
ULP_AT_ONE = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}
FLOOR_ULPS = 4


def max_error(actual, reference):
    """Largest absolute difference, computed in float64 on the CPU."""
    if actual.numel() == 0:
        return 0.0
    return (actual.detach().double().cpu() - reference.detach().double().cpu()).abs().max().item()
