"""The build's facts that `regnet-ext info` reports, and the one that silently costs speed:
without OpenMP, ATen's at::parallel_for runs every CPU pass of ours on one thread."""
import json

import pytest
import torch

from regnet_ext import _extension
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
    assert isinstance(info["cuda_gpu_verified"], bool)
