"""benchmarks/bench_fuse.py --quick: the pipeline and the structure of its JSON (not its speed)."""
import json

import pytest

import benchmark_scripts


@pytest.mark.slow
def test_quick_run_structure(tmp_path, capsys):
    bench = benchmark_scripts.load("bench_fuse")
    out = tmp_path / "fuse.json"
    assert bench.main(["--quick", "--no-tune-malloc", "--out", str(out)]) == 0  # it would outlive the test
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "bench_fuse" and doc["quick"] and doc["rounds"] == 2
    assert doc["malloc_tuned"] is False
    assert doc["sgd"] == ["fused"]  # PyTorch's fused SGD on the CPU, as fit() steps
    rows = doc["results"]
    assert {(r["mode"], r["variant"]) for r in rows} == {
        (mode, variant) for mode in ("inference", "training") for variant in ("eager", "fused")}
    for row in rows:
        assert row["images_per_s"] > 0 and len(row["rounds"]) == 2
        assert row["page_faults_per_call"] >= 0
    ratios = {(r["mode"], r["fused_vs"]): r for r in doc["ratios"]}
    assert set(ratios) == {("inference", "eager"), ("training", "eager")}
    assert ratios[("inference", "eager")]["goal"] == 1.6 and ratios[("training", "eager")]["goal"] == 1.3
    assert out.with_suffix(".png").stat().st_size > 0
    assert "f/eager" in capsys.readouterr().out


def test_bad_configs_and_models_are_refused_clearly(capsys):
    bench = benchmark_scripts.load("bench_fuse")
    for bad in ("8", "0x224", "ax224"):
        with pytest.raises(SystemExit):
            bench.main(["--configs", bad])
        assert "BATCHxRESOLUTION" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--models", "RegNetZ-1GF"])
    assert "--models: unknown RegNet model 'RegNetZ-1GF'" in capsys.readouterr().err


@pytest.mark.slow
def test_exclude_kernels_adds_the_in_process_ab(tmp_path):
    bench = benchmark_scripts.load("bench_fuse")
    out = tmp_path / "fuse_ab.json"
    assert bench.main(["--quick", "--no-tune-malloc", "--modes", "inference", "--exclude-kernels", "gemm_tiles",
                       "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["excluded_kernels"] == ["gemm_tiles"]
    assert {r["variant"] for r in doc["results"]} == {"eager", "fused", "fused-excluding"}
    assert {r["fused_vs"] for r in doc["ratios"]} == {"eager", "fused-excluding"}


@pytest.mark.slow
def test_aoti_variants_run_in_inference_and_compare_with_each_other(tmp_path):
    bench = benchmark_scripts.load("bench_fuse")
    out = tmp_path / "fuse_aoti.json"
    assert bench.main(["--models", "RegNetX-400MF", "--configs", "2x32", "--rounds", "1", "--reps", "1",
                       "--warmup", "1", "--no-tune-malloc", "--variants", "fused", "aoti", "fused-aoti",
                       "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    # No training rows for the packages: they have no backward.
    assert {(r["mode"], r["variant"]) for r in doc["results"]} == {
        ("inference", "fused"), ("inference", "aoti"), ("inference", "fused-aoti"), ("training", "fused")}
    assert {(r["variant"], r["fused_vs"]) for r in doc["ratios"]} == {("fused", "aoti"), ("fused-aoti", "aoti")}


def test_bad_excluded_kernels_are_refused_clearly(capsys):
    bench = benchmark_scripts.load("bench_fuse")
    with pytest.raises(SystemExit):
        bench.main(["--exclude-kernels", "cudnn"])
    assert "--exclude-kernels: unknown kernel 'cudnn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--variants", "fused", "fused-excluding"])
    assert "needs --exclude-kernels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--variants", "fused-aoti", "--autocast", "bfloat16"])
    assert "without autocast" in capsys.readouterr().err
