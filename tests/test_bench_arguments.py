"""The benchmark scripts' argument checks: a bad value is a usage error (exit 2, one line naming
the option) before any timing, never a traceback minutes in, a run of errors written as results,
or a default silently run in its place."""
import pytest

import benchmark_scripts


def _usage_error(capsys, script, argv, message):
    bench = benchmark_scripts.load(script)
    entry = getattr(bench, "parse_args", bench.main)
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("script", ["bench_kernels", "bench_conv_pair", "bench_weight_grad", "bench_traffic",
                                    "bench_fuse"])
def test_an_unknown_model_is_refused_before_any_work(capsys, tmp_path, script):
    # It was a traceback (bench_kernels, bench_traffic: at once; bench_conv_pair after timing the
    # models named before it).
    _usage_error(capsys, script, ["--models", "RegNetY-400MF", "RegNetZ-1GF", "--out", str(tmp_path / "r")],
                 "--models: unknown RegNet model 'RegNetZ-1GF'")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--batch", "1", "0"], "--batch: expected values > 0, got 1 0"),  # ran 138 rows into errors, exit 0
    (["--rounds", "0"], "--rounds: expected values > 0"),  # ran 15 rounds
    (["--sample-s", "0"], "--sample-s: expected values > 0"),
])
def test_bench_kernels_refuses_values_below_one(capsys, argv, message):
    _usage_error(capsys, "bench_kernels", argv, message)


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch: expected values > 0"),  # ran batch 8
    (["--rounds", "0"], "--rounds: expected values > 0"),  # ran 3 rounds
    (["--resolution", "0"], "--resolution: expected values > 0"),  # ran each model's own
])
def test_bench_models_refuses_zero_instead_of_running_the_default(capsys, tmp_path, argv, message):
    _usage_error(capsys, "bench_models", [*argv, "--out", str(tmp_path / "m")], message)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch: expected values > 0"),
    (["--resolution", "0"], "--resolution: expected values > 0"),
])
def test_bench_traffic_refuses_values_below_one(capsys, tmp_path, argv, message):
    _usage_error(capsys, "bench_traffic", [*argv, "--out", str(tmp_path / "t.json")], message)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script, argv, message", [
    ("bench_fuse", ["--rounds", "0"], "--rounds: expected values > 0"),
    ("bench_fuse", ["--warmup", "0"], "--warmup: expected values > 0"),
    ("bench_conv_pair", ["--warmup", "-1"], "--warmup: expected values >= 0, got -1"),
    ("bench_weight_grad", ["--batch", "1", "0"], "--batch: expected values > 0, got 1 0"),
])
def test_the_other_scripts_refuse_values_out_of_range(capsys, tmp_path, script, argv, message):
    _usage_error(capsys, script, [*argv, "--out", str(tmp_path / "r")], message)
    assert not list(tmp_path.iterdir())


SCRIPTS_WITH_OUT = ["bench_kernels", "bench_models", "bench_conv_pair", "bench_weight_grad", "bench_traffic",
                    "bench_fuse"]


@pytest.mark.parametrize("script", SCRIPTS_WITH_OUT)
def test_an_out_that_cannot_be_written_is_refused_before_any_work(capsys, tmp_path, script):
    # It was a traceback once the timing was done (minutes to hours in).
    (tmp_path / "file").write_text("")
    stem = tmp_path / "file" / "sub" / "r"
    _usage_error(capsys, script, ["--out", str(stem)],
                 f"--out: cannot write {str(stem) + '.json'!r}: {str(tmp_path / 'file')!r} is not a directory")


@pytest.mark.parametrize("stem, expected", [
    ("runs/kernels_y4.0gf", "runs/kernels_y4.0gf"),  # with_suffix wrote runs/kernels_y4.json
    ("runs/kernels", "runs/kernels"),
    ("runs/kernels.json", "runs/kernels"),
    ("runs/kernels.PNG", "runs/kernels"),
])
def test_an_out_stem_keeps_its_dots(stem, expected):
    common = benchmark_scripts.load("common")
    assert str(common.output_file(stem, ".json")) == expected + ".json"
    assert str(common.output_file(stem, ".png")) == expected + ".png"


def test_bench_weight_grad_writes_under_the_stem_given(tmp_path, monkeypatch, capsys):
    bench = benchmark_scripts.load("bench_weight_grad")
    row = {"label": "shape", "shape": {}, "median_ms": {"onednn": 2.0, "tiles": 1.0, "default": 1.0},
           "onednn_over_tiles": 2.0, "default_over_best": 1.0}
    monkeypatch.setattr(bench, "measure", lambda shape, rounds, warmup: row)  # no timing
    assert bench.main(["--quick", "--out", str(tmp_path / "wg_y4.0gf")]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written[0] == "wg_y4.0gf.json" and written[1:] in ([], ["wg_y4.0gf.png"])
    assert f"wrote {tmp_path / 'wg_y4.0gf.json'}" in capsys.readouterr().out


@pytest.mark.parametrize("names, message", [
    # Matched by exact label, a misspelt or absent name compiled nothing, silently.
    (["RegNetY-400M"], "--compile-models: unknown RegNet model 'RegNetY-400M'"),
    (["RegNetX-200MF"], "--compile-models: RegNetX-200MF not in this run (its RegNets: RegNetX-400MF, RegNetY-400MF"),
])
def test_bench_models_refuses_compile_models_it_would_not_compile(capsys, tmp_path, names, message):
    _usage_error(capsys, "bench_models", ["--groups", "0", "--compile-models", *names, "--no-tune-malloc",
                                          "--out", str(tmp_path / "m")], message)
    assert not list(tmp_path.iterdir())


def test_bench_models_takes_any_spelling_of_compile_models(tmp_path, monkeypatch):
    bench = benchmark_scripts.load("bench_models")
    seen = []

    def fake_group(index, label, members, args, log):
        seen.append(args.compile_models)
        return dict(group=label, trained=False, models={})

    monkeypatch.setattr(bench, "run_group", fake_group)
    monkeypatch.setattr(bench, "print_group", lambda group: None)
    monkeypatch.setattr(bench, "plot", lambda doc, path: path.write_bytes(b"png"))
    assert bench.main(["--groups", "0", "--compile-models", "regnet_y_400mf", "--no-tune-malloc",
                       "--out", str(tmp_path / "m")]) == 0
    assert seen == [["RegNetY-400MF"]]


def test_bench_models_resume_keeps_the_groups_that_groups_leaves_out(tmp_path, monkeypatch):
    # `--groups 1 --resume` after a run of group 0 rewrote the JSON with group 1 alone.
    import json

    bench = benchmark_scripts.load("bench_models")
    calls = []

    def fake_group(index, label, members, args, log):
        calls.append(label)
        return dict(group=label, trained=False, models={})

    monkeypatch.setattr(bench, "run_group", fake_group)
    monkeypatch.setattr(bench, "print_group", lambda group: None)
    monkeypatch.setattr(bench, "plot", lambda doc, path: path.write_bytes(b"png"))
    argv = ["--families", "Y", "--variants", "stock", "--no-tune-malloc", "--out", str(tmp_path / "m")]
    assert bench.main(argv + ["--groups", "2"]) == 0
    assert bench.main(argv + ["--groups", "0", "--resume"]) == 0
    assert calls == ["1.6GF vs B2", "400MF vs B0"]
    done = json.loads((tmp_path / "m.json").read_text())
    assert [g["group"] for g in done["groups"]] == ["400MF vs B0", "1.6GF vs B2"]
    assert done["resumed_groups"] == ["1.6GF vs B2"] and done["complete"] is True
