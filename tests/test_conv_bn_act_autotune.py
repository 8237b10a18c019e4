"""The CPU conv autotuner (csrc/cpu/conv_autotune.h): where oneDNN and our kernels can
both run a grouped conv pass (eval, training forward, backward), the first call of a shape times
the candidates and later calls run the recorded winner. Checked: one decision per shape and pass, results still match the float64
reference, the winner is what runs (Winograd's results differ from oneDNN's by rounding, so the
output tells them apart), the switches that turn it off, and the kernels left out of the choice."""
import pytest
import torch

import regnet_ext._C as compiled
from conv_bn_act_reference import make_case
from regnet_ext.ops import (clear_cpu_conv_autotune, conv_bn_act, cpu_conv_autotune_enabled, cpu_conv_autotune_excluded,
                            cpu_conv_autotune_excluding, cpu_conv_autotune_records, cpu_conv_kernel_names)
from test_conv_bn_act import _run_and_compare

HAVE_NARROW = bool(getattr(compiled, "narrow_group_kernel", 0))  # AVX-512 or AVX2+FMA
HAVE_WINOGRAD = bool(getattr(compiled, "winograd_kernel", 0))  # AVX-512
HAVE_GEMM_TILES = bool(getattr(compiled, "gemm_tiles_kernel", 0))  # AVX-512
needs_narrow = pytest.mark.skipif(not HAVE_NARROW, reason="built without the narrow-group kernel: oneDNN is the only candidate")
needs_winograd = pytest.mark.skipif(not HAVE_WINOGRAD, reason="built without AVX-512: no Winograd kernel to time")


def _eval_call(case, groups, **kw):
    with torch.no_grad():
        return conv_bn_act(case["x"], case["weight"], case["bn_weight"], case["bn_bias"], case["running_mean"],
                           case["running_var"], bias=case["bias"], groups=groups, residual=case["residual"], **kw)


@pytest.mark.parametrize("width, own", [pytest.param(8, "narrow", marks=needs_narrow),
                                        pytest.param(16, "narrow", marks=needs_narrow),
                                        pytest.param(32, "winograd", marks=needs_winograd)])
def test_one_decision_per_shape_and_pass(autotune, width, own):
    channels, groups = 4 * width, 4
    case = make_case(2, channels, channels, 9, 3, 1, groups, channels_last=True, residual=True, seed=width)
    _run_and_compare(case, stride=1, groups=groups, training=False, relu=True)
    _run_and_compare(case, stride=1, groups=groups, training=True, relu=False)
    _run_and_compare(case, stride=1, groups=groups, training=False, relu=True)  # looked up, not timed again
    records = cpu_conv_autotune_records()
    # Eval and training share the backward's record: the conv gradients cost the same in both.
    assert sorted(r["pass"] for r in records) == ["backward", "eval", "train_forward"]
    backward_plans = {"onednn", "onednn_input_grad+own_weight_grad"}
    backward_plans |= {f"{own}_input_grad+onednn_weight_grad", f"{own}_input_grad+own_weight_grad"}
    for r in records:
        assert r["dtype"] == torch.float32 and r["x_shape"] == (2, channels, 9, 9) and r["groups"] == groups
        expected = backward_plans if r["pass"] == "backward" else {"onednn", own}
        if r["pass"] != "backward" and HAVE_GEMM_TILES and width % 16 == 0 and width >= 32:  # grouped_conv_wide.h
            expected = expected | {"wide_group"}
        if HAVE_WINOGRAD and width == 16:  # winograd_16_per_group_candidate
            expected = expected | ({"winograd_input_grad+onednn_weight_grad", "winograd_input_grad+own_weight_grad"}
                                   if r["pass"] == "backward" else {"winograd"})
        assert set(r["median_us"]) == expected and all(t > 0 for t in r["median_us"].values())
        assert r["chosen"] == min(r["median_us"], key=r["median_us"].get)
    eval_record = next(r for r in records if r["pass"] == "eval")
    assert eval_record["relu"] and eval_record["residual"] and eval_record["kernel"] == 3


@needs_winograd
def test_the_recorded_winner_is_what_runs(autotune, monkeypatch):
    channels, groups = 128, 2  # 64 per group, stride 1: Winograd or oneDNN (the wide-group tiles,
    # whose sums come out as oneDNN's to the bit here, left out)
    case = make_case(1, channels, channels, 14, 3, 1, groups, channels_last=True, residual=False, seed=5)
    with cpu_conv_autotune_excluding(*(["wide_group"] if HAVE_GEMM_TILES else [])):
        tuned = _eval_call(case, groups)
        (record,) = cpu_conv_autotune_records()
        again = _eval_call(case, groups)
    # Each kernel alone: oneDNN with REGNET_EXT_CPU_CONV=aten, Winograd by the fixed rules.
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "aten")
    onednn = _eval_call(case, groups)
    monkeypatch.delenv("REGNET_EXT_CPU_CONV")
    monkeypatch.setenv("REGNET_EXT_CPU_AUTOTUNE", "0")
    winograd = _eval_call(case, groups)
    assert not torch.equal(onednn, winograd), "the two kernels must be told apart by their rounding"
    expected = winograd if record["chosen"] == "winograd" else onednn
    assert torch.equal(tuned, expected) and torch.equal(again, expected)


@needs_winograd  # 32 per group: the training forward's candidate is Winograd
def test_backward_with_one_gradient_is_its_own_pass(autotune):
    case = make_case(1, 64, 64, 14, 3, 1, 2, channels_last=True, residual=False, bias=False, seed=2)
    weight = case["weight"].clone().requires_grad_()
    y = conv_bn_act(case["x"], weight, case["bn_weight"], case["bn_bias"], case["running_mean"],
                    case["running_var"], groups=2, training=True)
    y.backward(torch.randn_like(y))  # x needs no gradient: the weight's alone
    passes = {r["pass"]: r for r in cpu_conv_autotune_records()}
    assert set(passes) == {"train_forward", "backward_weight"}
    assert set(passes["backward_weight"]["median_us"]) == {"onednn", "onednn_input_grad+own_weight_grad"}


@pytest.mark.parametrize("switch", ["env", "deterministic", "forced_backend"])
def test_switched_off(autotune, monkeypatch, switch):
    case = make_case(1, 32, 32, 7, 3, 1, 4, channels_last=True, residual=False)
    if switch == "env":
        monkeypatch.setenv("REGNET_EXT_CPU_AUTOTUNE", "0")
    elif switch == "forced_backend":
        monkeypatch.setenv("REGNET_EXT_CPU_CONV", "aten")
    assert cpu_conv_autotune_enabled() is (switch == "deterministic")
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(switch == "deterministic")
    try:
        assert cpu_conv_autotune_enabled() is False
        _eval_call(case, 4)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert cpu_conv_autotune_records() == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_1x1_convs_time_the_gemm_against_onednn(autotune, dtype):
    # bfloat16's results are checked in test_conv_bn_act_gemm.py (they need plain PyTorch's error).
    case = make_case(2, 48, 104, 14, 1, 1, 1, dtype=dtype, channels_last=True, residual=True, seed=7)
    if dtype == torch.float32:
        _run_and_compare(case, stride=1, groups=1, training=False, relu=True, backward=False)
        _run_and_compare(case, stride=1, groups=1, training=True, relu=True)
    else:
        _eval_call(case, 1)
    records = cpu_conv_autotune_records()
    # float32 also times the backward's two GEMMs against oneDNN's conv backward.
    passes = ["backward", "eval", "train_forward"] if dtype == torch.float32 else ["eval"]
    assert sorted(r["pass"] for r in records) == passes
    for r in records:
        # float32 with AVX-512 also times our GEMM tiles (eval, training forward, backward).
        tiles = {"gemm_tiles"} if HAVE_GEMM_TILES and dtype == torch.float32 else set()
        assert r["kernel"] == 1 and r["dtype"] == dtype and set(r["median_us"]) == {"onednn", "gemm"} | tiles
        assert r["chosen"] == min(r["median_us"], key=r["median_us"].get)


@pytest.mark.parametrize("dtype, groups", [(torch.float64, 4), (torch.float32, 1), (torch.float32, 8)],
                         ids=["float64", "ungrouped", "4_per_group"])
def test_only_where_both_kernels_can_run(autotune, dtype, groups):
    case = make_case(1, 32, 32, 7, 3, 1, groups, dtype=dtype, channels_last=True, residual=False)
    _eval_call(case, groups)
    assert cpu_conv_autotune_records() == []


def test_bfloat16_narrow_groups_where_the_cpu_has_avx512_bf16(autotune):
    case = make_case(1, 32, 32, 7, 3, 1, 4, dtype=torch.bfloat16, channels_last=True, residual=False)
    _eval_call(case, 4)
    records = cpu_conv_autotune_records()
    if not getattr(compiled, "narrow_group_bf16_kernel", 0):
        assert records == []
        return
    (record,) = records
    assert record["dtype"] == torch.bfloat16 and set(record["median_us"]) == {"onednn", "narrow"}


@needs_narrow
def test_a_new_thread_count_times_again(autotune):
    case = make_case(1, 32, 32, 7, 3, 1, 4, channels_last=True, residual=False)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            _eval_call(case, 4)
    finally:
        torch.set_num_threads(threads)
    assert sorted(r["threads"] for r in cpu_conv_autotune_records()) == [1, 2]


def test_clear_forgets(autotune):
    case = make_case(1, 32, 32, 7, 3, 1, 4, channels_last=True, residual=False)
    _eval_call(case, 4)
    assert len(cpu_conv_autotune_records()) == (1 if HAVE_NARROW else 0)
    clear_cpu_conv_autotune()
    assert cpu_conv_autotune_records() == []


def _median_without_faulted_rounds(rounds, faults):
    kept = [t for t, f in zip(rounds, faults) if f == 0] or rounds
    return sorted(kept)[len(kept) // 2]


@pytest.mark.parametrize("size", [14, 56], ids=["small", "large_output"])
def test_each_median_leaves_out_rounds_that_took_page_faults(autotune, size):
    # The 56px output (1.6 MB) is where the heap grows into fresh pages during the first rounds.
    case = make_case(2, 48, 64, size, 1, 1, 1, channels_last=True, residual=True, seed=size)
    _run_and_compare(case, stride=1, groups=1, training=True, relu=True)
    _eval_call(case, 1)
    records = cpu_conv_autotune_records()
    assert sorted(r["pass"] for r in records) == ["backward", "eval", "train_forward"]
    for r in records:
        assert set(r["rounds_us"]) == set(r["round_faults"]) == set(r["median_us"])
        for name, rounds in r["rounds_us"].items():
            faults = r["round_faults"][name]
            assert 3 <= len(rounds) == len(faults) <= 15
            assert all(t > 0 for t in rounds) and all(isinstance(f, int) and f >= 0 for f in faults)
            assert r["median_us"][name] == pytest.approx(_median_without_faulted_rounds(rounds, faults), rel=1e-12)
        assert r["chosen"] == min(r["median_us"], key=r["median_us"].get)


@needs_narrow
def test_excluded_kernels_are_left_out_and_each_set_keeps_its_choices(autotune):
    case = make_case(2, 32, 32, 9, 3, 1, 4, channels_last=True, residual=True, seed=11)
    left_out = ["narrow", "narrow_input_grad+own_weight_grad"]
    assert cpu_conv_autotune_excluded() == ()
    with cpu_conv_autotune_excluding(*left_out):
        assert list(cpu_conv_autotune_excluded()) == left_out
        _run_and_compare(case, stride=1, groups=4, training=True, relu=True)
    assert cpu_conv_autotune_excluded() == ()
    # The training forward had oneDNN left alone (run, not timed); the backward three plans of four.
    (excluding,) = cpu_conv_autotune_records()
    assert excluding["pass"] == "backward" and excluding["excluded"] == left_out
    assert set(excluding["median_us"]) == {"onednn", "onednn_input_grad+own_weight_grad",
                                           "narrow_input_grad+onednn_weight_grad"}
    _run_and_compare(case, stride=1, groups=4, training=True, relu=True)
    with cpu_conv_autotune_excluding(*left_out):
        _run_and_compare(case, stride=1, groups=4, training=True, relu=True)  # looked up, not timed again
    records = cpu_conv_autotune_records()
    assert sorted((r["pass"], len(r["excluded"])) for r in records) == [
        ("backward", 0), ("backward", 2), ("train_forward", 0)]
    assert next(r for r in records if r["pass"] == "backward" and not r["excluded"])["median_us"].keys() >= {
        "narrow_input_grad+own_weight_grad"}


@needs_narrow
def test_excluding_every_candidate_leaves_the_rule(autotune):
    case = make_case(1, 32, 32, 7, 3, 1, 4, channels_last=True, residual=False, seed=12)
    with cpu_conv_autotune_excluding("onednn"), cpu_conv_autotune_excluding("narrow"):  # nested: they add up
        assert set(cpu_conv_autotune_excluded()) == {"onednn", "narrow"}
        _run_and_compare(case, stride=1, groups=4, training=False, relu=True, backward=False)
        assert cpu_conv_autotune_excluded() == ("onednn", "narrow")
    assert cpu_conv_autotune_records() == [] and cpu_conv_autotune_excluded() == ()


def test_excluding_an_unknown_kernel_is_refused_and_errors_restore_the_set():
    with pytest.raises(ValueError, match="unknown kernel 'cudnn'.*gemm_tiles"):
        with cpu_conv_autotune_excluding("cudnn"):
            pass
    with pytest.raises(RuntimeError, match="inside"):
        with cpu_conv_autotune_excluding("gemm_tiles"):
            raise RuntimeError("inside")
    assert cpu_conv_autotune_excluded() == ()
    assert "onednn" in cpu_conv_kernel_names() and len(set(cpu_conv_kernel_names())) == len(cpu_conv_kernel_names())


def test_unknown_switch_values_warn_instead_of_passing_for_settings():
    # In a fresh process: each warning is issued once per process.
    import os
    import subprocess
    import sys

    script = ("import torch; from regnet_ext.ops import conv_bn_act\n"
              "x, w = torch.randn(1, 16, 8, 8), torch.randn(16, 8, 3, 3)\n"
              "with torch.no_grad(): conv_bn_act(x, w, torch.ones(16), torch.zeros(16), torch.zeros(16), "
              "torch.ones(16), groups=2)\n")
    env = dict(os.environ, REGNET_EXT_CPU_CONV="owm", REGNET_EXT_CPU_AUTOTUNE="maybe")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "REGNET_EXT_CPU_CONV=owm is not one of tiles, aten, own, gemm_tiles, wide_group" in run.stderr
    assert "REGNET_EXT_CPU_AUTOTUNE=maybe is neither 0 (off) nor 1 (on)" in run.stderr
