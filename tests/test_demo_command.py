"""`regnet-ext demo`, the README's first command, on a small input: it checks the fused model
against the stock one, profiles both, times them against EfficientNet-B0 and writes its files
(the structure of the output, not its speed)."""
import importlib.util
import json

import pytest

from regnet_ext.cli import main


def test_demo_writes_profile_and_throughput(tmp_path, capsys):
    pytest.importorskip("torchvision")
    rc = main(["demo", "--batch", "2", "--resolution", "64", "--iters", "1", "--rounds", "1",
               "--out", str(tmp_path), "--no-tune-malloc"])  # malloc settings would outlive the test
    assert rc == 0
    out = capsys.readouterr().out
    assert "stock time / fused time per stage" in out and "x EfficientNet-B0" in out
    assert "1 interleaved rounds" in out and "\r" not in out  # no in-place progress in a log
    throughput = json.loads((tmp_path / "throughput.json").read_text())
    assert set(throughput["images_per_s"]) == {"EfficientNet-B0 (stock)", "RegNetY-400MF (stock)",
                                               "RegNetY-400MF (fused)"}
    assert all(v > 0 for v in throughput["images_per_s"].values())
    assert throughput["page_faults_per_call"].keys() == throughput["images_per_s"].keys()
    assert throughput["malloc_tuned"] is False and "page faults per call" in out
    assert "allocator: malloc's own settings" in out
    assert json.loads((tmp_path / "profile.json").read_text())["malloc_tuned"] is False
    if importlib.util.find_spec("matplotlib") is not None:  # plots are optional
        assert (tmp_path / "profile.png").exists() and (tmp_path / "throughput.png").exists()


def test_demo_tunes_malloc_by_default_without_mmap(tmp_path, capsys, recorded_malloc_tuning):
    calls = recorded_malloc_tuning
    assert main(["demo", "--batch", "1", "--resolution", "32", "--iters", "1",
                 "--no-efficientnet", "--out", str(tmp_path)]) == 0
    assert calls == [{"use_mmap": False}]
    assert "no model pays first-touch page faults" in capsys.readouterr().out
