"""One source of truth for how close an operator's result must be to its float64 reference.

float32/float64 results are checked with fixed atol/rtol. Reduced-precision results (bfloat16,
float16) are held to a small multiple of *plain PyTorch's own* error at that precision against
the same float64 reference, so the tolerance means "no worse than stock PyTorch", not "anything goes".
"""
import torch

from regnet_ext.tolerances import ERROR_MULTIPLE, FLOOR_ULPS, ULP_AT_ONE, allowed_error, max_error  # noqa: F401

# atol/rtol for dtypes whose rounding error is far below the tests' signal.
_FIXED = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=1e-3, rtol=1e-3),
}
# Plain PyTorch's own result in these dtypes sets the scale of the tolerance.
REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def tolerances(dtype):
    """atol/rtol for comparing a `dtype` result with a float64 reference (float32/float64)."""
    if dtype in REDUCED_PRECISION:
        raise ValueError(f"{dtype} is checked against plain PyTorch's error: use assert_close_to_reference")
    return dict(_FIXED[dtype])


def assert_close_to_reference(actual, reference, *, plain_torch=None, name="result"):
    """Checks `actual` (any dtype) against a float64 `reference`.

    float32/float64: atol (times the reference's largest magnitude, when above 1) and rtol.
    For reduced-precision dtypes `plain_torch` is plain PyTorch's result in the same dtype: the
    error of `actual` must stay within ERROR_MULTIPLE times its error (plus a few ulps, scaled by
    the reference's magnitude)."""
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    if actual.dtype not in REDUCED_PRECISION:
        # atol scales with the reference's magnitude: sums over many terms (weight gradients)
        # carry absolute rounding errors proportional to their size.
        tol = tolerances(actual.dtype)
        scale = max(reference.double().abs().max().item(), 1.0) if reference.numel() else 1.0
        torch.testing.assert_close(actual.double().cpu(), reference.double().cpu(), atol=tol["atol"] * scale,
                                   rtol=tol["rtol"], msg=lambda m: f"{name}: {m}")
        return
    if plain_torch is None:
        raise ValueError(f"{name}: a {actual.dtype} result needs plain PyTorch's result to set the tolerance")
    allowed = allowed_error(reference, plain_torch, actual.dtype)
    floor = allowed - ERROR_MULTIPLE * max_error(plain_torch, reference)
    err = max_error(actual, reference)
    assert err <= allowed, (f"{name}: {actual.dtype} max error {err:.3g} exceeds {allowed:.3g} "
                            f"({ERROR_MULTIPLE}x plain PyTorch's {max_error(plain_torch, reference):.3g} + {floor:.3g})")
