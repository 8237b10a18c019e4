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
    assert code == 2 and "--flops: expected LO:HI" in err


@pytest.mark.parametrize("argv, message", [
    (["sample", "regnetx", "--flops", "100X:200M"],
     "--flops: expected LO:HI with numbers and an optional k, M or G suffix, got '100X:200M'"),
    (["sample", "regnetx", "--params", ":6Q"], "--params: expected LO:HI"),
    (["sample", "regnetx", "--set", "wm=abc"], "--set wm: expected LO:HI or one number"),
    (["sample", "anynetx_a", "--set", "group_widths=8,x"],
     "--set group_widths: expected comma-separated numbers"),
    (["sample", "regnetx", "--set", "se_ratio=q"], "--set se_ratio: expected a number"),
    (["fit", "--widths", "32,abc"], "--widths: expected comma-separated numbers (e.g. 24,56,152), "
                                    "got '32,abc'"),
    (["fit", "--widths", "24,56", "--wm-range", "a:b"], "--wm-range: expected LO:HI"),
    (["fit", "--widths", "24,56", "--wm-range", ":3"], "wm_range: expected (low, high)"),
])
def test_unparseable_values_name_the_option(argv, message, capsys):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == "" and err.startswith(f"regnet-ext space: {message}")
    assert err.count("\n") == 1  # one line, no traceback


def test_missing_and_empty_input_files_are_told_apart(tmp_path, capsys):
    missing, empty = tmp_path / "nope.jsonl", tmp_path / "empty.jsonl"
    empty.write_text("")
    out = str(tmp_path / "r.jsonl")
    for argv, name, what in ((["sweep", "{}", "--out", out], "path", "sample records"),
                             (["analyze", "{}"], "paths", "records")):
        code, _, err = _run(capsys, *[a.format(missing) for a in argv])
        assert code == 2 and err == f"regnet-ext space: {name}: {missing} does not exist\n"
        code, _, err = _run(capsys, *[a.format(empty) for a in argv])
        assert code == 2 and err == f"regnet-ext space: {name}: {empty} holds no {what}\n"


def test_sample_table_shows_group_widths_as_built_and_marks_adjusted_ones(capsys):
    code, out, _ = _run(capsys, "sample", "anynetx_a", "-n", "3", "--flops", "100M:400M")
    lines = out.splitlines()
    assert code == 0 and lines[0].endswith("depths / widths / group widths (as built)")
    samples = ds.sample("anynetx_a", 3, flops=(100e6, 400e6))
    adjusted = 0
    for s, line in zip(samples, lines[1:]):
        built, sampled = s.spec.group_widths, s.config["group_widths"]
        marked = ", ".join(f"{b}*" if b != g else str(b) for b, g in zip(built, sampled))
        assert line.endswith(f"[{marked}]")
        adjusted += list(built) != sampled
    assert adjusted and lines[4].startswith("* changed from the sampled value")


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


def test_analyze_warns_when_results_were_trained_with_different_settings(tmp_path, capsys):
    settings = ds.sweep_settings(epochs=1)

    def results(name, space, **changes):
        path = tmp_path / name
        write_records(str(path), [{"space": space, "trial": t, "flops": 1e8 + t, "params": 1e6,
                                   "acts": 1e6, "config": {"wm": 2 + t / 10},
                                   "spec": {"depths": [1] * 4, "widths": [8] * 4},
                                   "top1_error": 30.0 + t, "settings": dict(settings, **changes)}
                                  for t in range(4)])
        return str(path)

    a, b = results("a.jsonl", "anynetx_a"), results("b.jsonl", "regnetx")
    c = results("c.jsonl", "regnetx", epochs=5, lr=0.1)
    code, _, err = _run(capsys, "analyze", a, b, "--repetitions", "10")
    assert code == 0 and err == ""
    code, out, err = _run(capsys, "analyze", a, b, c, "--repetitions", "10", "--json")
    assert code == 0 and json.loads(out)["summary"]["regnetx"]["n"] == 8  # a warning, not an error
    assert err == (f"regnet-ext space: warning: results trained with different settings are "
                   f"compared: epochs=5, lr=0.1 in {c} (regnetx) vs epochs=1, lr=0.025 in "
                   f"{a} (anynetx_a), {b} (regnetx)\n")


def _results(path, trials, **fields):
    write_records(str(path), [dict({"space": "regnetx", "trial": t, "flops": 1e8 + t,
                                    "params": 1e6, "acts": 1e6, "config": {"wm": 2 + t / 10},
                                    "spec": {"depths": [1] * 4, "widths": [8] * 4},
                                    "top1_error": 30.0 + t}, **fields) for t in trials])
    return str(path)


def test_analyze_warns_about_missing_trials_and_counts_diverged_ones(tmp_path, capsys):
    part = _results(tmp_path / "part.jsonl", [0, 1, 3], sweep_trials=4)
    code, out, err = _run(capsys, "analyze", part, "--repetitions", "10")
    assert code == 0 and err == (f"regnet-ext space: warning: {part} holds 3 of its sweep's 4 "
                                 f"trials (1 missing: run the sweep again to finish it)\n")
    full = _results(tmp_path / "full.jsonl", range(4), sweep_trials=4)
    write_records(full, [dict(r, diverged=True, top1_error=100.0) if r["trial"] == 2 else r
                         for r in ds.load_results(full)])
    code, out, err = _run(capsys, "analyze", full, "--repetitions", "10")
    assert code == 0 and err == ""
    assert out.splitlines()[0].split()[:3] == ["space", "n", "diverged"]
    assert out.splitlines()[1].split()[:3] == ["regnetx", "4", "1"]


def test_analyze_reads_a_file_given_twice_once(tmp_path, capsys):
    path = _results(tmp_path / "r.jsonl", range(4))
    code, once, _ = _run(capsys, "analyze", path, "--repetitions", "50", "--json")
    code, twice, err = _run(capsys, "analyze", path, str(tmp_path / "." / "r.jsonl"),
                            "--repetitions", "50", "--json")
    assert code == 0 and json.loads(twice) == json.loads(once)
    assert err == (f"regnet-ext space: warning: {tmp_path / '.' / 'r.jsonl'} is {path} again; "
                   f"it is read once\n")


@pytest.mark.parametrize("fraction", ["0", "-0.1", "1.5", "4"])
def test_analyze_refuses_a_fraction_outside_0_1(tmp_path, fraction, capsys):
    path = _results(tmp_path / "r.jsonl", range(4))
    code, out, err = _run(capsys, "analyze", path, "--fraction", fraction)
    assert code == 2 and out == "" and err == (f"regnet-ext space: --fraction: expected a "
                                               f"fraction of the models in (0, 1], got "
                                               f"{float(fraction):g}\n")
    assert _run(capsys, "analyze", path, "--fraction", "1", "--repetitions", "10")[0] == 0


@pytest.mark.parametrize("resolution", ["0", "-224"])
def test_sample_refuses_a_non_positive_resolution(resolution, capsys):
    code, out, err = _run(capsys, "sample", "regnetx", "-n", "2", "--resolution", resolution)
    assert code == 2 and out == "" and err == (f"regnet-ext space: --resolution: expected an "
                                               f"integer >= 1, got {resolution}\n")


def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    assert _run(capsys, "sample", "regnetx", "-n", "2", "--out", str(samples))[0] == 0
    results = _results(tmp_path / "r.jsonl", range(4))
    missing = tmp_path / "nodir" / "x.png"
    cases = [
        (["sample", "regnetx", "-n", "2", "--out", str(tmp_path)],
         f"--out: {tmp_path} is a directory; expected a file path"),
        (["sample", "regnetx", "-n", "2", "--out", str(missing)],
         f"--out: the folder of {missing} does not exist"),
        (["sweep", str(samples), "--out", str(missing), "--engine", "inline"],
         f"--out: the folder of {missing} does not exist"),
        (["analyze", results, "--edf", str(missing)],
         f"--edf: the folder of {missing} does not exist"),
        (["analyze", results, "--scatter", str(missing)],
         f"--scatter: the folder of {missing} does not exist"),
        (["analyze", results, "--edf", "/proc/x.png"], "--edf: cannot write /proc/x.png ("),
    ]
    for argv, message in cases:
        code, out, err = _run(capsys, *argv)
        assert code == 2 and out == "" and err.startswith(f"regnet-ext space: {message}"), err
        assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "s.jsonl"]


def test_analyze_reports_the_files_it_writes_for_names_without_an_extension(tmp_path, capsys,
                                                                            monkeypatch):
    # matplotlib adds .png to a name without an extension: that file is the one reported.
    monkeypatch.chdir(tmp_path)
    _results(tmp_path / "r.jsonl", range(4))
    _results(tmp_path / "y.jsonl", range(4), space="regnety")
    code, out, _ = _run(capsys, "analyze", "r.jsonl", "--edf", "edf", "--scatter", "trend.",
                        "--repetitions", "10", "--json")
    assert code == 0 and json.loads(out)["plots"] == ["trend.png", "edf.png"]
    code, out, _ = _run(capsys, "analyze", "r.jsonl", "y.jsonl", "--scatter", "trend",
                        "--repetitions", "10")
    assert code == 0 and out.endswith("wrote trend_regnetx.png\nwrote trend_regnety.png\n"), out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "edf.png", "r.jsonl", "trend.png", "trend_regnetx.png", "trend_regnety.png", "y.jsonl"]


def test_analyze_refuses_a_plot_format_matplotlib_cannot_write_before_any_work(tmp_path, capsys):
    results = _results(tmp_path / "r.jsonl", range(4))
    code, out, err = _run(capsys, "analyze", results, "--edf", str(tmp_path / "edf.v1"))
    assert code == 2 and out == "" and err.startswith(
        f"regnet-ext space: --edf: matplotlib cannot write .v1 files ({tmp_path / 'edf.v1'}); "
        "use one of ") and "png, " in err and err.count("\n") == 1, err
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]
