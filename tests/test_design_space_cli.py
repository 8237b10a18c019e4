"""`regnet-ext space ...`: sample, analyze and fit from the command line."""
import json

import numpy as np
import pytest

from regnet_ext import design_space as ds
from regnet_ext.cli import main
from regnet_ext.design_space.records import write_records
from regnet_ext.models.generator import quantized_widths


def _run(capsys, *argv):
    code = main(["space", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_json_and_file_agree_with_the_api(tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    code, out, _ = _run(capsys, "sample", "regnetx", "-n", "4", "--flops", "360M:400M",
                        "--seed", "3", "--out", str(path), "--json")
    assert code == 0
    api = [s.to_dict() for s in ds.sample("regnetx", 4, flops=(360e6, 400e6), seed=3)]
    assert json.loads(out) == api
    assert [s.to_dict() for s in ds.load_samples(str(path))] == api


def test_sample_variant_from_the_command_line(capsys):
    code, out, _ = _run(capsys, "sample", "anynetx_e", "-n", "5", "--set", "bottleneck_ratios=1",
                        "--set", "depth=1:4", "--set", "se_ratio=0.25", "--json")
    assert code == 0
    for s in json.loads(out):
        assert s["space"] == "anynetx_e_custom" and s["spec"]["se_ratio"] == 0.25
        assert set(s["config"]["bottleneck_ratios"]) == {1} and max(s["config"]["depths"]) <= 4


def test_bad_input_is_a_clear_error(capsys):
    code, _, err = _run(capsys, "sample", "regnetx", "-n", "2", "--flops", "1k:2k",
                        "--max-attempts", "500")
    assert code == 2 and "found only 0 of n=2" in err
    code, _, err = _run(capsys, "sample", "regnetx", "--set", "colour=red")
    assert code == 2 and "--set" in err
    code, _, err = _run(capsys, "sample", "regnetx", "--flops", "400M")
    assert code == 2 and "LOW:HIGH" in err


def test_fit_from_widths(capsys):
    widths = quantized_widths(48, 36.97, 2.24, 16)[2]
    code, out, _ = _run(capsys, "fit", "--widths", ",".join(map(str, widths)), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["e_fit"] == 0.0 and doc["fitted_widths"] == widths and doc["w0"] == 48


def test_analyze_writes_plots_and_intervals(tmp_path, capsys):
    rng = np.random.default_rng(0)
    records = []
    for space, shift in (("regnetx", 0.0), ("anynetx_a", 5.0)):
        for trial in range(30):
            wm = float(rng.uniform(2, 3))
            records.append({"space": space, "trial": trial, "flops": float(rng.uniform(3e8, 4e8)),
                            "params": 4e6, "acts": 3e6, "config": {"wm": wm},
                            "spec": {"depths": [1, 2, 3, 4], "widths": [8, 16, 32, 64]},
                            "top1_error": 30 + shift + 20 * (wm - 2.4) ** 2, "train_time_s": 1.0})
    path = tmp_path / "r.jsonl"
    write_records(str(path), records)
    edf, scatter = tmp_path / "edf.png", tmp_path / "trend.png"
    code, out, _ = _run(capsys, "analyze", str(path), "--edf", str(edf), "--weighted",
                        "--scatter", str(scatter), "--params", "wm,flops", "--repetitions", "2000",
                        "--json")
    doc = json.loads(out)
    assert code == 0 and edf.stat().st_size > 0
    assert sorted(doc["plots"]) == sorted([str(edf), str(tmp_path / "trend_regnetx.png"),
                                           str(tmp_path / "trend_anynetx_a.png")])
    assert doc["summary"]["regnetx"]["n"] == 30
    assert doc["summary"]["anynetx_a"]["min_error"] > doc["summary"]["regnetx"]["min_error"]
    wm = doc["bootstrap"]["regnetx"]["wm"]
    assert wm["low"] <= 2.4 <= wm["high"]
    code, _, err = _run(capsys, "analyze", str(path), "--params", "nope")
    assert code == 2 and "nope" in err


@pytest.mark.parametrize("action", ["list", "sample", "sweep", "analyze", "fit"])
def test_every_action_has_help(action, capsys):
    with pytest.raises(SystemExit) as e:
        main(["space", action, "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out
