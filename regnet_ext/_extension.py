"""Loads the compiled library (regnet_ext._C) once and says why when it cannot."""
import importlib

_state = {"loaded": None, "error": None}


def load():
    """Imports regnet_ext._C (registering the operators); returns True on success."""
    if _state["loaded"] is None:
        try:
            import torch  # noqa: F401  (loads libtorch, which _C links against)

            importlib.import_module("regnet_ext._C")
            _state["loaded"] = True
        except ImportError as exc:  # not built, or built against another torch
            _state["loaded"], _state["error"] = False, exc
    return _state["loaded"]


def require():
    if not load():
        raise ImportError(
            "regnet_ext's compiled operators are not available "
            f"({_state['error']}). Build them with `pip install --no-build-isolation .` "
            "(or `make build` in a checkout) using the torch you run with.") from _state["error"]


def _build_flag(name):
    """A constant _C sets at import (csrc/python/module.cpp), as a bool; None when the extension is
    not loaded."""
    if not load():
        return None
    import regnet_ext._C as compiled

    return bool(getattr(compiled, name, 0))


def compiled_with_openmp():
    """Whether _C was compiled with OpenMP, so that its CPU passes run on several threads."""
    return _build_flag("openmp")


def compiled_with_narrow_group_kernel():
    """Whether _C has the grouped conv for 8 and 16 channels per group (AVX-512 or AVX2+FMA)."""
    return _build_flag("narrow_group_kernel")


def compiled_with_narrow_group_bf16_kernel():
    """Whether _C has the AVX512-BF16 grouped conv for 8 and 16 channels per group in bfloat16."""
    return _build_flag("narrow_group_bf16_kernel")


def compiled_with_winograd_kernel():
    """Whether _C has the AVX-512 Winograd grouped 3x3 conv (32 to 128 channels per group)."""
    return _build_flag("winograd_kernel")


def compiled_with_gemm_tiles_kernel():
    """Whether _C has the AVX-512 register tiles of our 1x1 convs in eval and of our stem convs
    (KxK with at most 4 input channels, eval and the training forward)."""
    return _build_flag("gemm_tiles_kernel")


def build_config():
    """What setup.py recorded at build time (empty dict when the package was never built)."""
    try:
        from . import _build_config
    except ImportError:
        return {}
    return {k: v for k, v in vars(_build_config).items() if k.isupper()}
