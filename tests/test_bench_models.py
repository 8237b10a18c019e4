"""benchmarks/bench_models.py --quick: the structure of its output (not its speed), and its
hook-based complexity counts against the analytic complexity()."""
import json

import pytest
import torch

import benchmark_scripts
from regnet_ext.models import complexity, regnet


def _bench():
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
        assert bench.main(["--quick", "--threads", "1", "--out", str(tmp_path / "quick")]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "quick.json").read_text())
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
    assert models["EfficientNet-B0"]["variants"]["stock"]["infer_speedup"] == 1.0
    fused = models["RegNetY-400MF"]["variants"]["fused"]
    assert fused["available"] or fused["reason"]
    assert (tmp_path / "quick.png").stat().st_size > 0
