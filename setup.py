"""Builds regnet_ext._C from csrc/ (CPU always; CUDA when torch has CUDA and a toolkit is found).

Environment:
  REGNET_EXT_CUDA        auto (default) | 0 | 1   -- 1 fails loudly if CUDA cannot be built
  TORCH_CUDA_ARCH_LIST   architectures; defaulted below when no GPU is visible
  REGNET_EXT_CPU_FLAGS   extra C++ flags for the CPU kernels (default: -march=native)
  CUDA_HOME / CUDA_PATH  the toolkit; otherwise asked of the nvcc found on PATH
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# One source of truth for what is compiled; CMakeLists.txt globs the same patterns
# (tests/test_build.py checks the two agree).
CPU_SOURCE_PATTERNS = ("csrc/*.cpp", "csrc/cpu/*.cpp", "csrc/python/*.cpp")
CUDA_SOURCE_PATTERNS = ("csrc/cuda/*.cu", "csrc/cuda/*.cpp")
CUDA_MODES = ("auto", "0", "1")


def sources(patterns):
    return sorted(p for pat in patterns for p in glob.glob(str(ROOT / pat)))


def _toolkit_from_nvcc(nvcc):
    """Ask nvcc where its toolkit lives: wrappers such as /usr/local/bin/nvcc hide the real path."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([nvcc, "-v", "--dryrun", os.path.join(tmp, "probe.cu")],
                             capture_output=True, text=True).stderr
    match = re.search(r"^#\$ TOP=(.+)$", out, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


def find_cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = _toolkit_from_nvcc(nvcc)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def nvcc_version(cuda_home):
    out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                         capture_output=True, text=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def default_arch_list(nvcc_major):
    # Volta (7.0) through Hopper (9.0) plus PTX for newer GPUs; CUDA 13 dropped Volta.
    archs = ["7.5", "8.0", "8.6", "8.9", "9.0+PTX"]
    return ";".join((["7.0"] if nvcc_major < 13 else []) + archs)


def pip_cuda_include_dirs():
    """Headers that torch's pip dependencies ship (cuBLAS, cuSPARSE, cuDNN, ...)."""
    dirs = []
    for entry in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cudnn/include", "nvidia/cuda_runtime/include",
                    "nvidia/cublas/include", "nvidia/cusparse/include"):
            candidate = os.path.join(entry, sub)
            if os.path.isdir(candidate) and candidate not in dirs:
                dirs.append(candidate)
    return dirs


def decide_cuda():
    """Returns (build_cuda, cuda_home, reason)."""
    import torch

    mode = os.environ.get("REGNET_EXT_CUDA", "auto").strip()
    if mode not in CUDA_MODES:
        raise SystemExit(f"REGNET_EXT_CUDA must be one of {CUDA_MODES}, got {mode!r}")
    if mode == "0":
        return False, None, "disabled by REGNET_EXT_CUDA=0"
    cuda_home = find_cuda_home()
    problem = None
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} was built without CUDA"
    elif cuda_home is None:
        problem = "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    if problem:
        if mode == "1":
            raise SystemExit(f"REGNET_EXT_CUDA=1 but CUDA cannot be built: {problem}")
        return False, None, problem
    return True, cuda_home, f"toolkit at {cuda_home}"


def cpu_flags():
    """The C++ flags that pick the CPU kernels' instruction set (REGNET_EXT_CPU_FLAGS). The package
    is compiled on the machine that runs it, so by default they tune for its CPU."""
    return os.environ.get("REGNET_EXT_CPU_FLAGS", "-march=native").split()


def write_build_config(build_cuda, arch_list, reason):
    import torch

    text = (
        "# Written by setup.py at build time.\n"
        f"CUDA_COMPILED = {build_cuda!r}\n"
        f"CUDA_ARCH_LIST = {arch_list!r}\n"
        f"CUDA_BUILD_REASON = {reason!r}\n"
        f"TORCH_VERSION_AT_BUILD = {torch.__version__!r}\n"
        # A -march=native build runs only on CPUs with this one's instructions (`regnet-ext info`).
        f"CPU_FLAGS = {' '.join(cpu_flags())!r}\n"
    )
    (ROOT / "regnet_ext" / "_build_config.py").write_text(text)


def require_torch():
    """The extension is compiled against the torch it will run with, so torch must be importable
    here: pip's default isolated build environment has none (`pip install .` without
    --no-build-isolation), which otherwise ended in a ModuleNotFoundError traceback."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise SystemExit(
            f"regnet_ext: cannot import torch in this build environment ({e}). The extension is compiled "
            "against the torch you run with: install torch first, then build with "
            "`pip install --no-build-isolation .` (pip's isolated build environment has no torch)") from None


def main():
    from setuptools import setup

    require_torch()
    build_cuda, cuda_home, reason = decide_cuda()
    arch_list = None
    if build_cuda:
        # torch reads CUDA_HOME once, at import of cpp_extension; its own guess is wrong when
        # nvcc is a wrapper script outside the toolkit, so set it before the import.
        os.environ["CUDA_HOME"] = cuda_home
        import torch

        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_arch_list(nvcc_version(cuda_home)[0])
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    from torch.utils import cpp_extension

    if build_cuda:
        cpp_extension.CUDA_HOME = cuda_home
    print(f"regnet_ext: CUDA {'ON' if build_cuda else 'OFF'} ({reason}); archs={arch_list}")
    write_build_config(build_cuda, arch_list, reason)

    # -fopenmp: ATen's at::parallel_for is a header template that only runs in parallel when the
    # including translation unit is compiled with OpenMP (else it silently runs on one thread;
    # `regnet-ext info` reports it as cpu_kernels_parallel). The link resolves libgomp.so.1 to the
    # copy torch has already loaded. Only where torch itself uses OpenMP.
    import torch

    openmp = ["-fopenmp"] if torch.backends.openmp.is_available() and sys.platform != "darwin" else []
    # Quiet builds: GCC's warnings about its intrinsic headers are off inside them (see the forced
    # header); torch's vec headers hold `#pragma unroll`, unknown to GCC (80 warnings a build);
    # -Wpsabi: built without AVX-512, our 64-byte lane vectors "change the ABI" of the inline
    # functions that return them, while no function of ours crosses an ABI with one.
    quiet = ["-include", str(ROOT / "csrc" / "quiet_intrinsic_headers.h"), "-Wno-unknown-pragmas", "-Wno-psabi"]
    cxx_flags = ["-O3", "-std=c++20", "-Wall", "-Wno-unused-function", *quiet, *openmp, *cpu_flags()]
    link_flags = openmp
    define_macros = []
    srcs = [os.path.relpath(s, ROOT) for s in sources(CPU_SOURCE_PATTERNS)]
    include_dirs = [str(ROOT / "csrc")]
    if build_cuda:
        srcs += [os.path.relpath(s, ROOT) for s in sources(CUDA_SOURCE_PATTERNS)]
        include_dirs += pip_cuda_include_dirs()
        define_macros.append(("REGNET_EXT_WITH_CUDA", None))
        nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo",
                      # Register spills fail the build; CI also reads resource usage.
                      "-Xptxas=--warn-on-spills"]
        ext = cpp_extension.CUDAExtension(
            "regnet_ext._C", srcs, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags)
    else:
        ext = cpp_extension.CppExtension(
            "regnet_ext._C", srcs, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)

    setup(ext_modules=[ext],
          cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)})


if __name__ == "__main__":
    main()
