"""benchmarks/bench_conv_pair.py --quick: the structure of its output (not its speed), and that it
leaves the pair's switches as it found them."""
import json

import pytest

import benchmark_scripts
import regnet_ext._C as compiled
from regnet_ext.nn import conv_pair

pytestmark = pytest.mark.skipif(not getattr(compiled, "narrow_group_kernel", 0),
                                reason="built without AVX-512 or AVX2+FMA")


@pytest.mark.slow
def test_quick_run_structure(tmp_path, recorded_malloc_tuning):
    bench = benchmark_scripts.load("bench_conv_pair")
    defaults = conv_pair.MIN_INTERMEDIATE_BYTES, conv_pair.MAX_IN_CHANNELS
    assert bench.main(["--quick", "--out", str(tmp_path / "p")]) == 0
    assert conv_pair.enabled and (conv_pair.MIN_INTERMEDIATE_BYTES, conv_pair.MAX_IN_CHANNELS) == defaults
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["benchmark"] == "conv_pair" and doc["quick"] and doc["configs"] == [[2, 64]]
    (result,) = doc["results"]
    # RegNetY-400MF: 1 + 3 + 6 + 6 blocks, all with 8 channels per group.
    assert len(result["blocks"]) == 16 and result["blocks"][0]["block"] == "s1.b1"
    for block in result["blocks"]:
        assert block["off_ms"] > 0 and block["forced_ms"] > 0 and block["intermediate_mb"] > 0
        assert block["rule_takes_pair"] is False  # 64px at batch 2: below the size rule
    assert set(result["whole_ms"]) == {"off", "forced", "default"}
    assert (tmp_path / "p.png").stat().st_size > 0


def test_bad_arguments_are_refused():
    bench = benchmark_scripts.load("bench_conv_pair")
    for argv in (["--rounds", "0"], ["--configs", "8by224"], ["--configs", "0x224"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
