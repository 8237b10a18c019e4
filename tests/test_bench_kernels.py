"""benchmarks/bench_kernels.py --quick: the structure of its output (not its speed)."""
import json

import pytest
import torch

import benchmark_scripts


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
def test_quick_run_structure(tmp_path):
    bench = _bench()
    threads = torch.get_num_threads()
    try:  # one thread and no compile: quick and steady on a shared machine
        assert bench.main(["--quick", "--no-compile", "--threads", "1", "--out", str(tmp_path / "k")]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "k.json").read_text())
    assert doc["quick"] and doc["compile"] == [] and doc["machine"]["threads"] == 1
    assert {"cpu", "threads", "torch", "date"} <= set(doc["machine"])
    ops = {(r["op"], r["mode"]) for r in doc["rows"]}
    assert ops == {(op, mode) for op in ("conv_bn_act", "squeeze_excite") for mode in ("eval", "train")}
    for row in doc["rows"]:
        if "error" in row:  # an op that fails is reported in its own rows, never stops the run
            continue
        assert set(row["median_ms"]) == {"ours", "eager"}
        assert all(t > 0 for t in row["median_ms"].values())
        assert row["speedup"]["vs_eager"] == pytest.approx(row["median_ms"]["eager"] / row["median_ms"]["ours"])
        assert len(row["rounds_ms"]["ours"]) == doc["rounds"]
    se_rows = [r for r in doc["rows"] if r["op"] == "squeeze_excite"]
    assert se_rows and all("error" not in r for r in se_rows)
    assert "squeeze_excite_eval_vs_eager" in doc["summary"]
    assert (tmp_path / "k.png").stat().st_size > 0
