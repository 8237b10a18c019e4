"""setup.py and CMakeLists.txt must compile the same sources into the same library."""
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SETUP = runpy.run_path(str(ROOT / "setup.py"))  # guarded by __main__: defines, does not build


def _cmake():
    exe = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")
    if exe is None:
        pytest.fail("cmake is not installed (it is a test dependency: pip install cmake)")
    return exe


def _configure(build_dir, *extra):
    cmd = [_cmake(), "-S", str(ROOT), "-B", str(build_dir), f"-DPython3_EXECUTABLE={sys.executable}",
           *extra]
    ninja = shutil.which("ninja", path=os.path.dirname(sys.executable))
    if ninja:
        cmd += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return (build_dir / "regnet_ext_sources.txt").read_text().split()


def test_cuda_arch_default_covers_volta_to_hopper_with_ptx():
    assert SETUP["default_arch_list"](12) == "7.0;7.5;8.0;8.6;8.9;9.0+PTX"
    assert SETUP["default_arch_list"](13) == "7.5;8.0;8.6;8.9;9.0+PTX"  # CUDA 13 dropped Volta


def test_bad_cuda_mode_is_refused(monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CUDA", "yes")
    with pytest.raises(SystemExit, match="REGNET_EXT_CUDA must be one of"):
        SETUP["decide_cuda"]()


def test_a_build_without_torch_says_how_to_install():
    # `pip install .` builds in an isolated environment without the user's torch: it was a
    # ModuleNotFoundError traceback from decide_cuda.
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; "
            "runpy.run_path('setup.py', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "pip install --no-build-isolation ." in done.stderr and "install torch first" in done.stderr


@pytest.fixture(scope="module")
def cmake_cpu_build(tmp_path_factory):
    """The CMake build of the CPU library, with the C++ examples: (build dir, listed sources,
    what the build printed)."""
    build_dir = tmp_path_factory.mktemp("cmake")
    listed = _configure(build_dir, "-DREGNET_EXT_CPP_EXAMPLES=ON")
    done = subprocess.run([_cmake(), "--build", str(build_dir)], check=True, capture_output=True, text=True)
    return build_dir, listed, done.stdout + done.stderr


@pytest.mark.slow
def test_cmake_build_prints_no_compiler_warnings(cmake_cpu_build):
    # A user's CMake build, `setup.py build_ext` or `pip install -v` shows them (GCC 12 printed
    # about 640 before the quiet flags of setup.py and CMakeLists.txt).
    warnings = [line for line in cmake_cpu_build[2].splitlines() if "warning:" in line]
    assert not warnings, f"{len(warnings)} compiler warnings, the first: {warnings[:3]}"


@pytest.mark.slow
def test_cmake_builds_the_same_cpu_library(cmake_cpu_build):
    build_dir, listed, _ = cmake_cpu_build
    assert listed == SETUP["sources"](SETUP["CPU_SOURCE_PATTERNS"])
    built = next(build_dir.glob("_C*.so"))
    # A fresh interpreter, so the operators are not registered twice.
    code = ("import torch; torch.ops.load_library(%r); "
            "print([s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith('regnet_ext::')])"
            ) % str(built)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "regnet_ext::conv_bn_act" in out.stdout and "regnet_ext::squeeze_excite" in out.stdout


@pytest.mark.slow
def test_a_cpp_program_runs_an_aoti_package_of_a_fused_model(cmake_cpu_build, tmp_path):
    # examples/cpp/run_aoti_package: libtorch and libregnet_ext_ops, no Python (it would not link
    # if the operators' library needed Python's symbols). It hands the batch over in the package's
    # memory format and has the package check it (AOTI_RUNTIME_CHECK_INPUTS).
    from regnet_ext.deploy import aoti_package
    from test_fuse_export import images, rel_close, small_pair

    build_dir, _, _ = cmake_cpu_build
    runner = next(build_dir.rglob("run_aoti_package"))
    stock, fused = small_pair()
    cl = torch.channels_last
    stock, fused = stock.eval().to(memory_format=cl), fused.eval().to(memory_format=cl)
    aoti_package(fused, images(2).contiguous(memory_format=cl), tmp_path / "fused.pt2", max_batch=4)

    def run(x):
        torch.save(x, tmp_path / "x.pt")
        return subprocess.run([str(runner), str(tmp_path / "fused.pt2"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                              capture_output=True, text=True, timeout=300)

    for n in (1, 3):
        x = images(n, seed=n)  # NCHW: the program makes it channels_last
        done = run(x)
        assert done.returncode == 0, done.stderr
        with torch.no_grad():
            rel_close(torch.load(tmp_path / "y.pt"), stock(x), 1e-5)
    done = run(images(5))  # beyond the package's batches
    # (AOTInductor prints the message itself too, before the program's one line.)
    assert done.returncode == 1 and "run_aoti_package: input_handles[0]: dim value is too large" in done.stderr


@pytest.mark.slow
def test_cmake_cuda_source_list_matches_setup(tmp_path):
    if SETUP["find_cuda_home"]() is None:
        pytest.skip("no CUDA toolkit on this machine")
    if torch.version.cuda is None:  # CMake's Torch package then has no CUDA to configure
        pytest.skip(f"torch {torch.__version__} is a CPU build")
    listed = _configure(tmp_path, "-DREGNET_EXT_CUDA=ON")
    expected = sorted(SETUP["sources"](SETUP["CPU_SOURCE_PATTERNS"] + SETUP["CUDA_SOURCE_PATTERNS"]))
    assert listed == expected
