"""The build's facts that `regnet-ext info` reports, and the one that silently costs speed:
without OpenMP, ATen's at::parallel_for runs every CPU pass of ours on one thread."""
import json

import pytest
import torch

from regnet_ext import _extension, _verification
from regnet_ext.cli import main


@pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="this torch has no OpenMP")
def test_extension_is_compiled_with_openmp():
    assert _extension.compiled_with_openmp() is True


def test_info_json_reports_kernels_and_parallel_passes(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["extension_loaded"] is True
    assert info["cpu_kernels"]["regnet_ext::conv_bn_act_train"] is True
    assert info["cpu_kernels_parallel"] is _extension.compiled_with_openmp()
    assert info["cpu_narrow_group_kernel"] is _extension.compiled_with_narrow_group_kernel()
    assert info["cpu_winograd_kernel"] is _extension.compiled_with_winograd_kernel()
    assert info["cpu_gemm_tiles_kernel"] is _extension.compiled_with_gemm_tiles_kernel()
    # The instruction set a -march=native build needs on the machine it is moved to.
    assert info["cpu_flags_at_build"] == _extension.build_config()["CPU_FLAGS"] != ""
    # The release's record of a GPU run is about this build only when it compiled CUDA kernels.
    expected = _verification.CUDA_KERNELS_GPU_VERIFIED if info["cuda_compiled"] else None
    assert info["cuda_gpu_verified"] is expected


def test_info_text_does_not_claim_gpu_verification_without_cuda_kernels(capsys, monkeypatch):
    monkeypatch.setattr(_extension, "build_config", lambda: {"CUDA_COMPILED": 0})
    assert main(["info"]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert rows["cuda_gpu_verified"] == "-"
    assert rows["cuda_verification"] == "CUDA kernels were not compiled in this build."
