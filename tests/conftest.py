import os

import pytest
import torch

# Which conv kernel a test runs is decided by the fixed rules, so that each kernel's tests cover
# the shapes chosen for it; the autotuner, which picks by timing, has its own tests
# (test_conv_bn_act_autotune.py). Set before any operator runs: the kernels read it per call.
os.environ["REGNET_EXT_CPU_AUTOTUNE"] = "0"


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    if not torch.cuda.is_available():
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def autotune(monkeypatch):
    """The CPU conv autotuner on (as users run it), its records cleared before and after."""
    from regnet_ext.ops import clear_cpu_conv_autotune

    monkeypatch.setenv("REGNET_EXT_CPU_AUTOTUNE", "1")
    clear_cpu_conv_autotune()
    yield
    clear_cpu_conv_autotune()


@pytest.fixture
def recorded_malloc_tuning(monkeypatch):
    """The kwargs of every regnet_ext.allocator.tune_malloc call, which reports success: commands
    run in this process tune malloc by default, and the settings would outlive the test
    (tests/test_allocator.py checks the real ones in child processes)."""
    import regnet_ext.allocator as allocator

    calls = []
    monkeypatch.setattr(allocator, "tune_malloc", lambda **kw: calls.append(kw) or True)
    return calls
