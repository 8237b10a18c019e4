"""benchmarks/bench_kernels.py --quick: the structure of its output (not its speed)."""
import json
import statistics
import time

import pytest
import torch

import benchmark_scripts
import regnet_ext._C as compiled
from regnet_ext.ops import clear_cpu_conv_autotune


def _bench():
    return benchmark_scripts.load("bench_kernels")


def test_shapes_come_from_the_generator():
    bench = _bench()
    shapes = list(bench.block_shapes(bench.model_specs(["RegNetY-400MF"])[0], batch=1))
    convs = [s for s in shapes if isinstance(s, bench.ConvShape)]
    ses = [s for s in shapes if isinstance(s, bench.SEShape)]
    assert convs[0] == bench.ConvShape(3, 32, 3, 2, 1, 224, True, False, 1)
    # RegNetY-400MF: 16 blocks, each with an SE on the inner width (group width 8, se = w_in / 4).
    assert len(ses) == 16 and ses[0] == bench.SEShape(48, 8, 56, 1)
    grouped = [s for s in convs if s.kernel == 3 and s.c_in != 3]
    assert len(grouped) == 16 and {s.group_width for s in grouped} == {8}
    assert sum(s.residual for s in convs) == 16


@pytest.mark.slow
def test_quick_run_structure(tmp_path, monkeypatch):
    bench = _bench()
    monkeypatch.setenv("REGNET_EXT_CPU_AUTOTUNE", "1")  # as users run it (the tests' default is off)
    clear_cpu_conv_autotune()
    threads = torch.get_num_threads()
    try:  # one thread and no compile: quick and steady on a shared machine
        assert bench.main(["--quick", "--no-compile", "--threads", "1", "--out", str(tmp_path / "k")]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "k.json").read_text())
    assert doc["quick"] and doc["compile"] == [] and doc["machine"]["threads"] == 1
    assert {"cpu", "threads", "torch", "date"} <= set(doc["machine"])
    load = doc["machine"]["competing_load"]  # what others took while the candidates were timed
    assert load["timed_s"] > 0 and 0 <= load["other_processes_share"] and 0 <= load["steal_share"]
    ops = {(r["op"], r["mode"]) for r in doc["rows"]}
    assert ops == {(op, mode) for op in ("conv_bn_act", "squeeze_excite") for mode in ("eval", "train")}
    for row in doc["rows"]:
        if "error" in row:  # an op that fails is reported in its own rows, never stops the run
            continue
        assert set(row["median_ms"]) == {"ours", "eager"}
        assert all(t > 0 for t in row["median_ms"].values())
        per_round = [e / o for e, o in zip(row["rounds_ms"]["eager"], row["rounds_ms"]["ours"])]
        assert row["speedup"]["vs_eager"] == pytest.approx(statistics.median(per_round))
        assert len(row["rounds_ms"]["ours"]) == doc["rounds"]
    se_rows = [r for r in doc["rows"] if r["op"] == "squeeze_excite"]
    assert se_rows and all("error" not in r for r in se_rows)
    assert all((r["device"], r["dtype"], r["stock_layout"]) == ("cpu", "float32", "nhwc") for r in doc["rows"])
    # The default run keeps the summary keys of the committed results (README quotes them).
    assert list(doc["summary"]) == [
        f"{what}_{baseline}" for baseline in ("vs_eager", "vs_compile")
        for what in ("grouped3x3_eval_gw<=64", "conv_bn_act_eval", "conv_bn_act_train",
                     "squeeze_excite_eval", "squeeze_excite_train")] + ["slower_than_eager", "errors"]
    assert doc["summary"]["squeeze_excite_eval_vs_eager"]["rows"] == 1
    # Eval conv rows carry GFLOP/s (a direct conv's count), set against this run's ceiling.
    assert doc["compute_ceiling_gflops"] > 0 and isinstance(doc["grouped_goal_misses"], list)
    for row in doc["rows"]:
        if row["op"] == "conv_bn_act" and "error" not in row:
            assert ("gflops" in row) == (row["mode"] == "eval")
            if row["mode"] == "eval":
                flops = bench.ConvShape(**row["shape"]).flops
                assert row["gflops"]["ours"] == pytest.approx(flops / row["median_ms"]["ours"] / 1e6)
    assert (tmp_path / "k.png").stat().st_size > 0
    # The conv autotuner's decisions: the quick set has RegNetY-400MF's first grouped conv (8 per
    # group: oneDNN or the narrow kernel), a small 1x1 conv (oneDNN or the GEMM) and, with
    # AVX-512, the stem (oneDNN or the stem tiles, eval and training forward).
    assert doc["machine"]["regnet_ext_cpu_conv_autotune"] is True
    choices = doc["cpu_conv_autotune"]
    grouped = [c for c in choices if c["groups"] > 1]
    expected = {"eval", "train_forward", "backward"} if compiled.narrow_group_kernel else set()
    assert {c["pass"] for c in grouped} == expected and len(grouped) == len(expected)
    stem = [c for c in choices if c["x_shape"][1] == 3]
    expected = {"eval", "train_forward"} if compiled.gemm_tiles_kernel else set()
    assert {c["pass"] for c in stem} == expected and len(stem) == len(expected)
    assert all(set(c["median_us"]) == {"onednn", "stem_tiles"} for c in stem)
    pointwise = [c for c in choices if c["groups"] == 1 and c not in stem]
    tiles = {"gemm_tiles"} if compiled.gemm_tiles_kernel else set()  # (AVX-512)
    assert pointwise and all(c["kernel"] == 1 and set(c["median_us"]) == {"onednn", "gemm"} | tiles
                             for c in pointwise)
    for c in choices:
        assert c["dtype"] == "float32" and c["groups"] in (1, 6) and c["chosen"] in c["median_us"]
    clear_cpu_conv_autotune()


def test_conv_flops_count_a_direct_conv():
    bench = _bench()
    # 8 images of 56x56 outputs (stride 2 from 112, padding 1), 128 channels of 64 per group, 3x3.
    assert bench.ConvShape(128, 128, 3, 2, 2, 112, True, False, 8).flops == 2 * 8 * 56 * 56 * 128 * 64 * 9
    assert bench.ConvShape(3, 32, 3, 2, 1, 224, True, False, 1).flops == 2 * 112 * 112 * 32 * 3 * 9
    assert bench.ConvShape(440, 440, 1, 1, 1, 7, True, True, 1).flops == 2 * 49 * 440 * 440


def test_grouped_goal_misses_set_the_goal_against_the_ceiling():
    bench = _bench()

    def row(label, c_in, groups, kernel, ours, eager, mode="eval", dtype="float32"):
        shape = {"c_in": c_in, "c_out": c_in, "kernel": kernel, "stride": 2, "groups": groups, "size": 28,
                 "relu": True, "residual": False, "batch": 8}
        return {"op": "conv_bn_act", "mode": mode, "label": label, "dtype": dtype, "stock_layout": "nhwc",
                "shape": shape, "speedup": {"vs_eager": eager / ours},
                "gflops": {"ours": 100.0 / ours, "eager": 100.0 / eager}}

    rows = [row("fast", 512, 8, 3, 1.0, 2.0),            # 2x: meets the goal
            row("reachable", 512, 8, 3, 1.0, 1.2),       # the goal takes 1.5 * 83.3 = 125 GFLOP/s
            row("bound", 512, 8, 3, 1.0, 1.1),           # 1.5 * 90.9 = 136, above the ceiling
            row("wide groups", 512, 4, 3, 1.0, 1.0),     # 128 per group: not a goal row
            row("1x1", 512, 1, 1, 1.0, 1.0),
            row("bf16", 512, 8, 3, 1.0, 1.0, dtype="bfloat16")]
    misses = bench.grouped_goal_misses(rows, ceiling_gflops=130.0)
    assert [m["label"] for m in misses] == ["reachable", "bound"]
    assert misses[0]["goal_gflops"] == pytest.approx(1.5 * 100 / 1.2)
    assert misses[0]["ours_gflops"] == pytest.approx(100.0)
    assert [m["goal_above_ceiling"] for m in misses] == [False, True]


def _run_main(bench, argv):
    threads = torch.get_num_threads()
    try:  # one thread and no compile: quick and steady on a shared machine
        return bench.main(argv + ["--quick", "--no-compile", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def test_cuda_without_a_gpu_is_a_usage_error_not_a_traceback(tmp_path):
    done = benchmark_scripts.run("bench_kernels", "--device", "cuda", "--quick", "--no-compile",
                                 "--out", tmp_path / "k", hide_gpus=True)
    benchmark_scripts.assert_usage_error(done, "--device cuda: no CUDA GPU is available", tmp_path / "k.json")


def test_float16_on_the_cpu_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _bench().parse_args(["--dtypes", "float32", "float16"])
    assert exit_info.value.code == 2
    assert "--dtypes float16 needs --device cuda" in capsys.readouterr().err


def test_default_out_never_names_the_committed_results_for_other_settings():
    bench = _bench()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bench.default_out(cpu, ["float32"], ["nhwc"], quick=False).name == "kernels_cpu"
    assert bench.default_out(cpu, ["float32"], ["nhwc"], quick=True).name == "kernels_cpu_quick"
    assert bench.default_out(cuda, ["float32"], ["nhwc"], quick=False).name == "kernels_cuda"
    assert bench.default_out(cpu, ["bfloat16"], ["nhwc", "nchw"], quick=False).name == \
        "kernels_cpu_bfloat16_nhwc_nchw"


@pytest.mark.slow
def test_bfloat16_quick_run_records_the_dtype(tmp_path):
    bench = _bench()
    assert _run_main(bench, ["--dtypes", "bfloat16", "--out", str(tmp_path / "k")]) == 0
    doc = json.loads((tmp_path / "k.json").read_text())
    assert doc["dtypes"] == ["bfloat16"] and doc["device"] == "cpu" and doc["machine"]["device"] == "cpu"
    assert doc["rows"] and all(r["dtype"] == "bfloat16" and r["stock_layout"] == "nhwc" for r in doc["rows"])
    assert all(r["label"].endswith(" bfloat16") for r in doc["rows"])
    assert all(r["median_ms"]["ours"] > 0 for r in doc["rows"] if "error" not in r)
    # Summary keys carry the dtype; the float32 keys belong to float32 rows only.
    assert doc["summary"]["conv_bn_act_eval_vs_eager_bfloat16"]["rows"] >= 1
    assert "conv_bn_act_eval_vs_eager" not in doc["summary"]


@pytest.mark.slow
def test_nchw_stock_layout_adds_rows_and_keeps_the_default_keys(tmp_path):
    bench = _bench()
    assert _run_main(bench, ["--stock-layouts", "nhwc", "nchw", "--modes", "eval",
                             "--out", str(tmp_path / "k")]) == 0
    doc = json.loads((tmp_path / "k.json").read_text())
    assert doc["stock_layouts"] == ["nhwc", "nchw"]
    nhwc = [r for r in doc["rows"] if r["stock_layout"] == "nhwc"]
    nchw = [r for r in doc["rows"] if r["stock_layout"] == "nchw"]
    assert nhwc and len(nchw) == len(nhwc)
    # nhwc rows keep the labels of earlier results; nchw rows say so in theirs.
    assert [r["label"] + " nchw" for r in nhwc] == [r["label"] for r in nchw]
    assert {"conv_bn_act_eval_vs_eager", "conv_bn_act_eval_vs_eager_nchw",
            "grouped3x3_eval_gw<=64_vs_eager_nchw"} <= set(doc["summary"])
    assert doc["summary"]["conv_bn_act_eval_vs_eager_nchw"]["rows"] == sum(r["op"] == "conv_bn_act" for r in nchw)


def test_nchw_baseline_runs_nchw_and_computes_what_ours_computes():
    bench = _bench()
    shape = bench.ConvShape(16, 16, 3, 1, 2, 10, True, True, 2)
    case = bench.Case(torch.device("cpu"), "float32", "nchw")
    candidates = bench.conv_candidates(shape, "eval", case, use_compile=False)
    eager, ours = candidates["eager"](), candidates["ours"]()
    assert eager.is_contiguous() and not eager.is_contiguous(memory_format=torch.channels_last)
    assert ours.is_contiguous(memory_format=torch.channels_last) and not ours.is_contiguous()
    torch.testing.assert_close(ours, eager, atol=1e-4, rtol=1e-4)
    for train_step in bench.conv_candidates(shape, "train", case, use_compile=False).values():
        train_step()  # forward + backward, each in its own layout


def test_bfloat16_candidates_compute_in_bfloat16():
    bench = _bench()
    case = bench.Case(torch.device("cpu"), "bfloat16", "nhwc")
    conv = bench.conv_candidates(bench.ConvShape(8, 8, 1, 1, 1, 6, True, False, 1), "eval", case, False)
    se = bench.se_candidates(bench.SEShape(8, 2, 6, 1), "eval", case, False)
    assert {fn().dtype for fn in [*conv.values(), *se.values()]} == {torch.bfloat16}


def test_cuda_timing_synchronises_after_every_sample(monkeypatch):
    """The CUDA branch of time_interleaved_on, with torch.cuda.synchronize faked: a sample must
    end with a synchronisation before another candidate's calls start, and the times are per call."""
    common = benchmark_scripts.load("common")
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))

    def slow():  # about 1 ms a call
        events.append("slow")
        time.sleep(0.001)

    candidates = {"slow": slow, "fast": lambda: events.append("fast")}
    timed = common.time_interleaved_on(torch.device("cuda"), candidates, rounds=4, warmup=1, target_s=0.02)
    assert set(timed) == {"slow", "fast"}
    assert all(len(t["rounds_s"]) == 4 for t in timed.values())
    # ~20 calls a sample; their total time would be ~20 ms, the time per call ~1 ms.
    assert timed["slow"]["calls"] >= 5 and 0.001 <= timed["slow"]["median_s"] < 0.005
    assert timed["fast"]["calls"] > timed["slow"]["calls"]
    unsynchronised_switches = [i for i in range(1, len(events))
                               if events[i] != "sync" and events[i - 1] not in ("sync", events[i])]
    assert events.count("sync") >= 2 * 4 and not unsynchronised_switches, events
