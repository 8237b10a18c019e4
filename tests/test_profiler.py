"""The per-stage profiler and `regnet-ext profile`: stage lookup on ours, torchvision's and timm's
RegNets, the JSON schema, bytes from the traffic model, kernel counts, the roofline probe."""
import json

import pytest
import torch

from regnet_ext.cli import main
from regnet_ext.models import regnet, regnet_spec
from regnet_ext.profiling import (FUSED_SCHEDULE, Ceiling, NOMINAL, device_ceiling, measure_ceiling,
                                  model_traffic, model_units, profile, profile_stock_and_fused,
                                  spec_from_model, stage_speedups)

FAKE = Ceiling("test ceiling", 10e9, 100e9, "nominal")  # keeps unit tests off the probe
STAGE_KEYS = {"name", "time_ms", "flops", "bytes", "gflops_per_s", "gb_per_s", "share",
              "roofline_pct", "kernels"}


def _tiny():
    # A small custom RegNetY: 4 stages, fast on the CPU.
    return regnet(w0=16, wa=8.0, wm=1.5, depth=6, group_width=8, se_ratio=0.25)


def _third_party(name):
    if name == "torchvision":
        torchvision = pytest.importorskip("torchvision")
        return torchvision.models.regnet_y_400mf(), regnet_spec("RegNetY-400MF",
                                                                 rounding="torchvision")
    timm = pytest.importorskip("timm")
    return timm.create_model("regnety_004", pretrained=False), regnet_spec("RegNetY-400MF")


@pytest.mark.parametrize("source", ["ours", "torchvision", "timm"])
def test_units_chain_reproduces_the_model(source):
    if source == "ours":
        model, spec = regnet("RegNetY-400MF"), regnet_spec("RegNetY-400MF")
    else:
        model, spec = _third_party(source)
    model.eval()
    found = spec_from_model(model)
    assert (found.depths, found.widths, found.group_widths, found.se_ratio) == (
        spec.depths, spec.widths, spec.group_widths, spec.se_ratio)
    units = model_units(model)
    assert [u.name for u in units][:3] == ["stem", "s1.b1", "s2.b1"]
    assert units[-1].name == "head" and len(units) == sum(spec.depths) + 2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = x
        for u in units:
            y = u.run(y)
        torch.testing.assert_close(y, model(x))


def test_spec_from_model_rejects_non_regnets():
    with pytest.raises(ValueError, match="model"):
        spec_from_model(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))


def test_timm_regnetz_is_refused_not_mismodelled():
    # It was profiled as a RegNetY (83.7M flops where it has 86.6M: its final conv left out).
    timm = pytest.importorskip("timm")
    with pytest.raises(ValueError, match="final conv"):
        spec_from_model(timm.create_model("regnetz_005", pretrained=False))


def test_profile_json_schema_and_traffic():
    model = _tiny()
    result = profile(model, (2, 3, 64, 64), iters=2, warmup=1, ceiling=FAKE)
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["schema"] == "regnet_ext.profile/1"
    assert [s["name"] for s in doc["stages"]] == ["stem", "s1", "s2", "s3", "s4", "head"]
    for s in doc["stages"] + doc["block_kinds"]:
        assert STAGE_KEYS <= set(s)
        assert s["time_ms"] > 0 and s["kernels"] > 0
        assert s["gb_per_s"] == pytest.approx(s["bytes"] / s["time_ms"] / 1e6)
    traffic = model_traffic(model.spec, 2, 64, schedule="eager", dtype=torch.float32)
    per_stage = traffic.per_stage()
    for s in doc["stages"]:
        assert s["bytes"] == per_stage[s["name"]].bytes
        assert s["flops"] == per_stage[s["name"]].flops
    assert sum(s["flops"] for s in doc["stages"]) == doc["total"]["flops"]
    assert sum(s["blocks"] for s in doc["block_kinds"]) == sum(model.spec.depths)
    assert doc["total"]["kernels"] == sum(s["kernels"] for s in doc["stages"])
    assert "per block kind" in result.table()


def test_stem_kernel_count():
    # Eager stem on the CPU: convolution, batch_norm, relu.
    result = profile(_tiny(), (1, 3, 32, 32), iters=1, warmup=0, ceiling=FAKE)
    assert result.stages[0]["kernels"] == 3


def test_profile_training_splits_forward_and_backward():
    result = profile(_tiny(), (2, 3, 32, 32), train=True, iters=1, warmup=0, ceiling=FAKE)
    for s in result.stages:
        assert s["forward_ms"] > 0 and s["backward_ms"] > 0
    traffic = model_traffic(_tiny().spec, 2, 32, training=True, dtype=torch.float32)
    assert result.total["bytes"] == traffic.total().bytes


def test_profile_third_party_model():
    model, _ = _third_party("torchvision")
    result = profile(model, (1, 3, 32, 32), iters=1, warmup=0, ceiling=FAKE,
                     name="torchvision RegNetY-400MF")
    assert [s["name"] for s in result.stages] == ["stem", "s1", "s2", "s3", "s4", "head"]


def test_fused_profile_needs_fuse():
    try:
        from regnet_ext.nn import fuse  # noqa: F401
        available = True
    except ImportError:
        available = False
    if available:
        result = profile(_tiny(), (1, 3, 32, 32), fused=True, iters=1, warmup=0, ceiling=FAKE)
        assert result.meta["schedule"] == FUSED_SCHEDULE
    else:
        with pytest.raises(RuntimeError, match="fuse"):
            profile(_tiny(), (1, 3, 32, 32), fused=True, iters=1, warmup=0, ceiling=FAKE)


def test_a_model_fused_already_is_profiled_as_fused():
    # It was labelled stock and measured against the eager schedule's traffic (20.2 MB where the
    # fused schedule moves 14.3 MB for RegNetX-200MF at 2 x 64 px).
    fuse = pytest.importorskip("regnet_ext.nn").fuse
    result = profile(fuse(_tiny()), (1, 3, 32, 32), iters=1, warmup=0, ceiling=FAKE)
    expected = profile(_tiny(), (1, 3, 32, 32), fused=True, iters=1, warmup=0, ceiling=FAKE)
    assert result.meta["fused"] and result.meta["schedule"] == FUSED_SCHEDULE
    assert result.total["bytes"] == expected.total["bytes"]


def test_stock_and_fused_pair_with_stand_in_fuse(monkeypatch):
    # The pairing and bookkeeping, independent of the real fuse(): an identity stand-in.
    from regnet_ext.profiling import profiler
    monkeypatch.setattr(profiler, "fuse_model", lambda m: m)
    stock, fused = profile_stock_and_fused(_tiny(), (1, 3, 32, 32), iters=2, warmup=0,
                                           ceiling=FAKE)
    assert (stock.meta["fused"], fused.meta["fused"]) == (False, True)
    assert (stock.meta["schedule"], fused.meta["schedule"]) == ("eager", FUSED_SCHEDULE)
    spec = _tiny().spec
    for result, schedule in ((stock, "eager"), (fused, FUSED_SCHEDULE)):
        expected = model_traffic(spec, 1, 32, schedule=schedule, dtype=torch.float32).total()
        assert result.total["bytes"] == expected.bytes
    assert set(stage_speedups(stock, fused)) == {s["name"] for s in stock.stages}


@pytest.mark.parametrize("kwargs, match", [
    (dict(input_shape=(1, 3, 32)), "input_shape"),
    (dict(input_shape=(1, 4, 32, 32)), "input_shape"),
    (dict(dtype="int8"), "dtype"),
    (dict(iters=0), "iters"),
    (dict(device="mps"), "device"),
])
def test_profile_bad_arguments(kwargs, match):
    args = dict(input_shape=(1, 3, 32, 32), ceiling=FAKE, iters=1, warmup=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        profile(_tiny(), **args)


def test_roofline_probe_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CACHE", str(tmp_path))
    probe = measure_ceiling("cpu", torch.float32, quick=True)
    assert probe.bytes_per_s > 1e8 and probe.flops_per_s > 1e8
    first = device_ceiling("cpu", torch.float32)
    assert (tmp_path / "roofline.json").exists()
    assert device_ceiling("cpu", torch.float32) == first  # read back, not re-measured
    assert device_ceiling("h100") == NOMINAL["h100"]
    with pytest.raises(ValueError, match="device"):
        device_ceiling("not-a-device")


def test_cli_profile_writes_json_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REGNET_EXT_CACHE", str(tmp_path))
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    rc = main(["profile", "--model", "RegNetY-200MF", "--batch", "1", "--resolution", "32",
               "--iters", "1", "--warmup", "0", "--json", str(out), "--plot", str(png),
               "--no-tune-malloc"])  # malloc settings would outlive the test
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["malloc_tuned"] is False
    assert [s["name"] for s in doc["stages"]][0] == "stem"
    assert all(STAGE_KEYS <= set(s) for s in doc["stages"])
    assert png.stat().st_size > 0
    assert "GFLOP/s" in capsys.readouterr().out


def test_cli_profile_reports_the_plot_file_it_writes_for_a_name_without_an_extension(tmp_path, monkeypatch,
                                                                                       capsys):
    # matplotlib adds .png to such a name; the command printed the name as given.
    monkeypatch.setenv("REGNET_EXT_CACHE", str(tmp_path))
    rc = main(["profile", "--model", "RegNetY-200MF", "--batch", "1", "--resolution", "32", "--iters", "1",
               "--warmup", "0", "--plot", str(tmp_path / "stages"), "--no-tune-malloc"])
    assert rc == 0
    assert (tmp_path / "stages.png").stat().st_size > 0 and not (tmp_path / "stages").exists()
    assert f"plot written to {tmp_path / 'stages.png'}" in capsys.readouterr().out


def test_cli_profile_refuses_a_plot_format_matplotlib_cannot_write(tmp_path, capsys):
    path = tmp_path / "stages.v1"
    assert main(["profile", "--model", "RegNetY-200MF", "--plot", str(path), "--no-tune-malloc"]) == 2
    assert capsys.readouterr().err.startswith("regnet-ext profile: --plot: matplotlib cannot write .v1 files")


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_cli_profile_refuses_an_unwritable_output_before_profiling(option, tmp_path, capsys):
    # It profiled, then ended in a FileNotFoundError traceback.
    path = tmp_path / "missing" / ("out.json" if option == "--json" else "out.png")
    assert main(["profile", "--model", "RegNetY-200MF", option, str(path), "--no-tune-malloc"]) == 2
    assert capsys.readouterr().err.strip() == f"regnet-ext profile: {option}: the folder of {path} does not exist"


def test_cli_profile_rejects_bad_batch(capsys):
    assert main(["profile", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.parametrize("train", [False, True])
def test_profile_on_cuda(train, tmp_path, monkeypatch):
    monkeypatch.setenv("REGNET_EXT_CACHE", str(tmp_path))
    result = profile(_tiny(), (4, 3, 64, 64), device="cuda", dtype=torch.bfloat16, train=train,
                     iters=3, warmup=1)
    assert result.meta["timer"] == "cuda events"
    assert result.ceiling["source"] == "measured" and result.ceiling["gb_per_s"] > 0
    for s in result.stages:
        assert s["time_ms"] > 0 and s["kernels"] > 0


def test_cli_profile_json_to_stdout(tmp_path, monkeypatch, capsys, recorded_malloc_tuning):
    monkeypatch.setenv("REGNET_EXT_CACHE", str(tmp_path))
    calls = recorded_malloc_tuning  # the default tunes malloc
    rc = main(["profile", "--model", "timm:regnety_002" if _has_timm() else "RegNetY-200MF",
               "--batch", "1", "--resolution", "32", "--iters", "1", "--warmup", "0",
               "--schedule", "compile", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schedule"] == "compile" and doc["stages"][-1]["name"] == "head"
    assert calls == [{"use_mmap": False}] and doc["malloc_tuned"] is True


def _has_timm():
    try:
        import timm  # noqa: F401
        return True
    except ImportError:
        return False


def test_kernel_counting_keeps_kinetos_start_stop_lines_off_stderr(capfd):
    import sys

    result = profile(_tiny(), (1, 3, 32, 32), iters=1, warmup=0, ceiling=FAKE)
    assert all(s["kernels"] > 0 for s in result.stages)
    print("still ours", file=sys.stderr)
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err
    assert "still ours" in err, "stderr must be restored"


def test_cli_profile_help_states_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "device to profile on (default cpu)" in text
    assert "dtype of the model and input (default float32)" in text
