"""benchmarks/bench_models.py --quick: the structure of its output (not its speed), and its
hook-based complexity counts against the analytic complexity()."""
import argparse
import json

import pytest
import torch

import benchmark_scripts
from regnet_ext.models import complexity, regnet


def _bench():
    pytest.importorskip("torchvision")  # the benchmark's EfficientNets
    return benchmark_scripts.load("bench_models")


@pytest.mark.parametrize("name, resolution", [("RegNetY-400MF", 96), ("RegNetX-200MF", 160)])
def test_hook_complexity_matches_analytic(name, resolution):
    model = regnet(name)
    macs, acts = _bench().count_complexity(model, resolution)
    expected = complexity(model.spec, resolution)
    assert (macs, acts) == (expected.flops, expected.acts)


def test_peak_memory_sees_live_tensors():
    bench = _bench()
    numel = int(torch.randint(100_000, 200_000, ()).item())
    kept = []
    peak = bench.peak_memory_bytes(lambda: kept.extend(torch.randn(numel) for _ in range(3)))
    assert peak >= 3 * numel * 4


@pytest.mark.slow
def test_quick_run_structure(tmp_path):
    bench = _bench()
    threads = torch.get_num_threads()
    try:  # one thread: steadier on a shared machine; restored for the other tests
        assert bench.main(["--quick", "--threads", "1", "--no-tune-malloc",  # it outlives the test
                           "--out", str(tmp_path / "quick")]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "quick.json").read_text())
    assert doc["malloc_tuned"] is False
    assert doc["quick"] and doc["batch"] == 2 and doc["machine"]["threads"] == 1
    assert {"cpu", "threads", "torch", "torchvision", "date"} <= set(doc["machine"])
    (group,) = doc["groups"]
    models = group["models"]
    assert set(models) == {"RegNetY-400MF", "EfficientNet-B0"}
    for label, m in models.items():
        assert m["macs"] > 0 and m["acts"] > 0 and m["resolution"] == 128
        stock = m["variants"]["stock"]
        assert stock["available"]
        for key in ("infer_images_per_s", "train_images_per_s", "peak_infer_bytes",
                    "peak_train_bytes", "infer_speedup", "train_speedup"):
            assert stock[key] > 0, (label, key)
        assert len(stock["infer_round_s"]) == doc["rounds"]
        assert stock["infer_page_faults_per_call"] >= 0 and stock["train_page_faults_per_call"] >= 0
        assert stock["sgd"] == ["fused"]  # PyTorch's fused SGD on the CPU, as fit() steps
    assert models["EfficientNet-B0"]["variants"]["stock"]["infer_speedup"] == 1.0
    fused = models["RegNetY-400MF"]["variants"]["fused"]
    assert fused["available"] or fused["reason"]
    assert (tmp_path / "quick.png").stat().st_size > 0


def test_cuda_without_a_gpu_is_a_usage_error_not_a_traceback(tmp_path):
    done = benchmark_scripts.run("bench_models", "--device", "cuda", "--quick", "--out", tmp_path / "m",
                                 hide_gpus=True)
    benchmark_scripts.assert_usage_error(done, "--device cuda: no CUDA GPU is available", tmp_path / "m.json")


def test_float16_on_the_cpu_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _bench().main(["--quick", "--dtype", "float16"])
    assert exit_info.value.code == 2
    assert "--dtype float16 needs --device cuda" in capsys.readouterr().err


def test_default_out_keeps_other_settings_apart():
    bench = _bench()
    assert bench.default_out(torch.device("cpu"), "float32", False).name == "models_cpu"
    assert bench.default_out(torch.device("cpu"), "bfloat16", True).name == "models_cpu_bfloat16_quick"
    assert bench.default_out(torch.device("cuda"), "float32", False).name == "models_cuda"


def test_bfloat16_converts_every_variant_and_input():
    bench = _bench()
    args = argparse.Namespace(device=torch.device("cpu"), dtype="bfloat16", batch=2,
                              variants=["stock", "fused"], compile_models=None)
    members = [("RegNetY-400MF", "regnet", "RegNetY-400MF", 64)]
    runners, info = bench.build_runners(members, args, train=True, log=lambda msg: None)
    fused_available = info["RegNetY-400MF"]["variants"]["fused"]["available"]
    assert [r.variant for r in runners] == ["stock"] + (["fused"] if fused_available else [])
    for r in runners:
        assert r.x.dtype == torch.bfloat16
        assert {p.dtype for p in r.train_model.parameters()} == {torch.bfloat16}
        assert r.infer().dtype == torch.bfloat16
        assert r.train_step().dtype == torch.bfloat16
    assert info["RegNetY-400MF"]["macs"] > 0


@pytest.mark.cuda
def test_peak_memory_on_cuda_sees_live_tensors():
    bench = _bench()
    device = torch.device("cuda")
    kept = []
    peak = bench.peak_memory_bytes(lambda: kept.extend(torch.randn(1 << 20, device=device) for _ in range(3)),
                                   device)
    assert peak >= 3 * (1 << 20) * 4


@pytest.mark.slow
def test_bfloat16_quick_run_records_the_dtype(tmp_path):
    bench = _bench()
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--threads", "1", "--no-tune-malloc", "--dtype", "bfloat16",
                           "--variants", "stock", "--out", str(tmp_path / "quick")]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "quick.json").read_text())
    assert doc["dtype"] == "bfloat16" and doc["device"] == "cpu" and doc["machine"]["device"] == "cpu"
    (group,) = doc["groups"]
    for label, m in group["models"].items():
        stock = m["variants"]["stock"]
        assert stock["infer_images_per_s"] > 0 and stock["peak_infer_bytes"] > 0, label


def test_interrupted_run_keeps_its_groups_and_resume_runs_the_rest(tmp_path, monkeypatch, capsys):
    """The JSON is written after every group; --resume keeps those groups (same settings only)."""
    bench = _bench()
    calls = []

    def fake_group(index, label, members, args, log):
        calls.append(label)
        if len(calls) == 2 and not args.resume:
            raise KeyboardInterrupt  # the run stops in its second group
        return dict(group=label, trained=False, models={})

    monkeypatch.setattr(bench, "run_group", fake_group)
    monkeypatch.setattr(bench, "print_group", lambda group: None)
    monkeypatch.setattr(bench, "plot", lambda doc, path: path.write_bytes(b"png"))
    argv = ["--families", "Y", "--variants", "stock", "--groups", "0", "1", "2", "--no-tune-malloc",
            "--out", str(tmp_path / "m")]
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv)
    first = json.loads((tmp_path / "m.json").read_text())
    assert [g["group"] for g in first["groups"]] == ["400MF vs B0"] and first["complete"] is False
    first["cpu_conv_autotune"] = [{"shape": "from the first run"}]  # as a run that had finished writes it
    (tmp_path / "m.json").write_text(json.dumps(first))

    calls.clear()
    assert bench.main(argv + ["--resume"]) == 0
    done = json.loads((tmp_path / "m.json").read_text())
    assert calls == ["600MF/800MF vs B1", "1.6GF vs B2"]  # the kept group is not run again
    assert [g["group"] for g in done["groups"]] == ["400MF vs B0", "600MF/800MF vs B1", "1.6GF vs B2"]
    assert done["complete"] is True and done["resumed_groups"] == ["400MF vs B0"]
    # the kept group's provenance stays with it: the first run's machine record and autotuner choices
    assert done["resumed_from"]["machine"] == first["machine"]
    assert done["resumed_from"]["cpu_conv_autotune"] == [{"shape": "from the first run"}]

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a usage error: exit 2 (it was 1)
        bench.main(argv + ["--resume", "--batch", "4"])
    assert exit_info.value.code == 2 and "other settings (batch)" in capsys.readouterr().err
