"""benchmarks/bench_weight_grad.py --quick: the structure of its output (not its speed), and
that it leaves REGNET_EXT_CPU_CONV as it found it."""
import json
import os

import pytest

import benchmark_scripts


@pytest.mark.slow
def test_quick_run_structure(tmp_path, monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CPU_CONV", "aten")
    bench = benchmark_scripts.load("bench_weight_grad")
    assert bench.main(["--quick", "--out", str(tmp_path / "w")]) == 0
    assert os.environ["REGNET_EXT_CPU_CONV"] == "aten"
    doc = json.loads((tmp_path / "w.json").read_text())
    assert doc["benchmark"] == "weight_grad" and doc["quick"] and doc["batches"] == [1]
    # RegNetY-400MF's grouped 3x3 convs: 7 distinct shapes, all of group width 8.
    assert len(doc["rows"]) == 7 and {r["shape"]["group_width"] for r in doc["rows"]} == {8}
    for row in doc["rows"]:
        ms = row["median_ms"]
        assert set(ms) == {"onednn", "tiles", "default"} and all(t > 0 for t in ms.values())
        assert row["onednn_over_tiles"] == pytest.approx(ms["onednn"] / ms["tiles"])
    assert (tmp_path / "w.png").stat().st_size > 0


def test_bad_arguments_are_refused():
    bench = benchmark_scripts.load("bench_weight_grad")
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "0"])
