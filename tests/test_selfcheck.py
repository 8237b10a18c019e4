"""regnet_ext.selfcheck and `regnet-ext selfcheck` on the CPU: every operator passes against stock
PyTorch, a wrong result or a raising kernel is reported as a failure, and the command's exit status
follows the results."""
import json
import math

import pytest
import torch

from regnet_ext import cli, selfcheck


def test_every_operator_passes_on_cpu():
    results = selfcheck.run("cpu", [torch.float32])
    assert {r.op for r in results} == {op for op in selfcheck.CHECKS
                                       if op not in selfcheck.APPLIES or selfcheck.APPLIES[op](torch.float32, torch.device("cpu"))}
    failed = [r for r in results if not r.passed]
    assert not failed, failed
    for r in results:
        assert 0 <= r.max_error <= r.tolerance


def test_every_registered_operator_has_a_check():
    # fuse(verify=True) runs these checks: an operator fused models call must not be missing.
    from regnet_ext.info import registered_operators

    checked = {op.split("[")[0] for op in selfcheck.CHECKS}
    assert {name.split("::")[1] for name in registered_operators()} <= checked


def test_float64_passes_on_cpu():
    results = selfcheck.run("cpu", [torch.float64])
    assert {"squeeze_excite_", "pool_linear", "pool_linear_backward"} <= {r.op for r in results}
    failed = [r for r in results if not r.passed]
    assert not failed, failed


def test_float64_running_stats_check_has_a_float64_tolerance():
    # Its plain-PyTorch update once read the running statistics the operator had already updated
    # in place (in float64, .to() returned the same tensors): a tolerance of 0.28, which let
    # almost any result pass.
    (result,) = [r for r in selfcheck.run("cpu", [torch.float64]) if r.op == "conv_bn_act_update_running_stats"]
    assert result.passed and result.tolerance < 1e-6


def test_bfloat16_passes_on_cpu():
    failed = [r for r in selfcheck.run("cpu", [torch.bfloat16]) if not r.passed]
    assert not failed, failed


def test_wrong_result_fails(monkeypatch):
    honest = selfcheck.reference_squeeze_excite
    # The reference (and stock PyTorch's result) move away from what the operator computes.
    monkeypatch.setattr(selfcheck, "reference_squeeze_excite", lambda *a: honest(*a) + 0.05)
    monkeypatch.setattr(selfcheck, "CHECKS", {"squeeze_excite": selfcheck.CHECKS["squeeze_excite"]})
    (result,) = selfcheck.run("cpu", [torch.float32])
    assert not result.passed
    assert result.max_error == pytest.approx(0.05, rel=1e-3)
    assert result.max_error > result.tolerance


def test_raising_operator_is_reported_not_raised(monkeypatch):
    def broken(dtype, device, gen):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(selfcheck, "CHECKS", {"broken_op": broken})
    (result,) = selfcheck.run("cpu", [torch.float32])
    assert not result.passed and math.isnan(result.max_error)
    assert "no kernel for this device" in result.detail


@pytest.mark.parametrize("passed,status", [(True, 0), (False, 1)])
def test_command_exit_status_follows_results(monkeypatch, capsys, passed, status):
    fake = [selfcheck.CheckResult("squeeze_excite", "float32", passed, 0.5, 1.0 if passed else 0.1)]
    monkeypatch.setattr(selfcheck, "run", lambda device, dtypes, seed=0: fake)
    assert cli.main(["selfcheck", "--device", "cpu", "--json"]) == status
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is passed and report["results"][0]["op"] == "squeeze_excite"


def test_command_prints_a_table(monkeypatch, capsys):
    fake = [selfcheck.CheckResult("conv_bn_act_eval", "bfloat16", False, 0.2, 0.1, "grouped3x3_gw8: y")]
    monkeypatch.setattr(selfcheck, "run", lambda device, dtypes, seed=0: fake)
    assert cli.main(["selfcheck", "--device", "cpu", "--dtypes", "bfloat16"]) == 1
    out = capsys.readouterr().out
    assert "conv_bn_act_eval" in out and "FAIL" in out and "0/1 checks passed" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(RuntimeError, match="CUDA"):
        selfcheck.run("cuda")
    assert cli.main(["selfcheck", "--device", "cuda"]) == 2
    assert "regnet-ext selfcheck: --device: CUDA" in capsys.readouterr().err


def test_a_device_without_our_kernels_is_one_clear_error(capsys):
    # It printed a FAIL row, with an exception, for each of the 16 checks.
    with pytest.raises(RuntimeError, match="kernels for cpu and cuda, not meta"):
        selfcheck.run("meta")
    assert cli.main(["selfcheck", "--device", "meta"]) == 2
    assert "not meta" in capsys.readouterr().err


@pytest.mark.parametrize("device, message", [
    # torch's own message listed twenty device types and named no option.
    ("tpu", "regnet-ext selfcheck: --device: expected cpu, cuda or cuda:N, got 'tpu'"),
    ("meta", "regnet-ext selfcheck: --device: regnet_ext has kernels for cpu and cuda, not meta"),
])
def test_a_bad_device_names_the_option(capsys, device, message):
    assert cli.main(["selfcheck", "--device", device]) == 2
    err = capsys.readouterr().err
    assert message in err and "selfcheck: selfcheck" not in err
