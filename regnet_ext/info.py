"""What was built and what this machine can run: the facts a bug report needs."""
import platform

import torch

from . import __version__, _extension, _verification

OPERATOR_NAMESPACE = "regnet_ext::"


def registered_operators():
    """Names of the regnet_ext operators registered with the dispatcher (after loading _C)."""
    _extension.load()
    return sorted({s.name for s in torch._C._jit_get_all_schemas()
                   if s.name.startswith(OPERATOR_NAMESPACE)})


def _has_kernel(op, dispatch_key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, dispatch_key)


def _cpu_conv_autotune():
    if not _extension.load():
        return None
    from .ops import cpu_conv_autotune_enabled

    return cpu_conv_autotune_enabled()


def collect():
    config = _extension.build_config()
    ops = registered_operators()
    cuda_available = torch.cuda.is_available()
    return {
        "regnet_ext": __version__,
        "torch": torch.__version__,
        "torch_at_build": config.get("TORCH_VERSION_AT_BUILD"),
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "extension_loaded": _extension.load(),
        "extension_error": None if _extension.load() else str(_extension._state["error"]),
        "cpu_kernels": {op: _has_kernel(op, "CPU") for op in ops},
        # The instruction set the CPU kernels were compiled for (-march=native: the building CPU's).
        "cpu_flags_at_build": config.get("CPU_FLAGS"),
        # Our CPU passes run on several threads only when _C was compiled with OpenMP.
        "cpu_kernels_parallel": _extension.compiled_with_openmp(),
        # Grouped convs with 8 or 16 channels per group run our AVX-512 or AVX2 kernel, if built.
        "cpu_narrow_group_kernel": _extension.compiled_with_narrow_group_kernel(),
        "cpu_narrow_group_bf16_kernel": _extension.compiled_with_narrow_group_bf16_kernel(),
        "cpu_winograd_kernel": _extension.compiled_with_winograd_kernel(),
        "cpu_gemm_tiles_kernel": _extension.compiled_with_gemm_tiles_kernel(),
        # Whether those kernels are timed against oneDNN per shape (regnet_ext/ops/cpu_autotune.py).
        "cpu_conv_autotune": _cpu_conv_autotune(),
        "cuda_compiled": bool(config.get("CUDA_COMPILED")),
        "cuda_build_note": config.get("CUDA_BUILD_REASON"),
        "cuda_archs": config.get("CUDA_ARCH_LIST"),
        "cuda_kernels": {op: _has_kernel(op, "CUDA") for op in ops},
        "cuda_available": cuda_available,
        "cuda_device": torch.cuda.get_device_name() if cuda_available else None,
        # The release's record of a GPU run: about this build only when it has CUDA kernels.
        "cuda_gpu_verified": (_verification.CUDA_KERNELS_GPU_VERIFIED if config.get("CUDA_COMPILED")
                              else None),
        "cuda_verification": (_verification.CUDA_VERIFICATION if config.get("CUDA_COMPILED")
                              else "CUDA kernels were not compiled in this build."),
        "operators": ops,
        "cpu_threads": torch.get_num_threads(),
    }
