"""`regnet-ext profile` and regnet_ext.profiling as a user meets them: errors that name the
option, a training run too small for BatchNorm refused up front, outputs never half-written."""
import json

import pytest

import regnet_ext.profiling.profiler as profiler
from regnet_ext.cli import main
from regnet_ext.models import regnet
from regnet_ext.profiling import Ceiling, plot_profiles, profile

FAKE = Ceiling("test ceiling", 10e9, 100e9, "nominal")  # keeps the tests off the roofline probe
SMALL = ["--model", "RegNetX-200MF", "--batch", "1", "--resolution", "32", "--iters", "1",
         "--warmup", "0", "--no-tune-malloc"]


@pytest.fixture
def no_probe(monkeypatch):
    monkeypatch.setattr(profiler, "device_ceiling", lambda *a, **k: FAKE)


def _tiny():
    return regnet(w0=16, wa=8.0, wm=1.5, depth=6, group_width=8, se_ratio=0.25)


def _profile_err(capsys, *args):
    rc = main(["profile", *SMALL, *args])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("args, option", [
    (["--model", "nope"], "--model"),  # was "name: unknown RegNet model"
    (["--schedule", "nope"], "--schedule"),  # was "schedule: ..."
    (["--warmup", "-1"], "--warmup"),  # was "warmup: ..."
])
def test_errors_name_the_option(args, option, capsys, no_probe):
    assert _profile_err(capsys, *args).startswith(f"regnet-ext profile: {option}: ")


def test_a_bad_schedule_with_plot_is_one_line_before_profiling(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(profiler, "_measure", lambda *a, **k: pytest.fail("profiled"))
    err = _profile_err(capsys, "--schedule", "nope", "--plot", str(tmp_path / "p.png"))
    assert err.startswith("regnet-ext profile: --schedule: ")


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_unknown_third_party_model_names_the_option(source, capsys, no_probe):
    pytest.importorskip(source)
    # torchvision said "Unknown model nope", timm "Unknown model (nope)" (a RuntimeError).
    err = _profile_err(capsys, "--model", f"{source}:nope")
    assert err.startswith(f"regnet-ext profile: --model: {source} has no model 'nope'")


def test_training_too_small_for_batchnorm_is_refused_up_front(capsys, no_probe):
    # batch 1 at 32x32 leaves 1x1 in s4: BatchNorm failed mid-run with torch's message.
    err = _profile_err(capsys, "--train")
    assert err.startswith("regnet-ext profile: --batch/--resolution: training needs more than one")
    with pytest.raises(ValueError, match="^input_shape: .*batch 1 at 32x32 leaves 1x1"):
        profile(_tiny(), (1, 3, 32, 32), train=True, iters=1, warmup=0, ceiling=FAKE)


def test_json_and_plot_on_the_same_file_are_refused(tmp_path, capsys, monkeypatch):
    # The JSON overwrote the plot just written, and both were reported as written.
    monkeypatch.setattr(profiler, "_measure", lambda *a, **k: pytest.fail("profiled"))
    err = _profile_err(capsys, "--json", str(tmp_path / "x.png"), "--plot", str(tmp_path / "x"))
    assert err.startswith("regnet-ext profile: --json: ") and "--plot" in err
    assert list(tmp_path.iterdir()) == []


def test_interrupted_json_write_leaves_no_file(tmp_path, capsys, monkeypatch, no_probe):
    def dump(doc, f, **kw):
        f.write('{"schema": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", dump)
    out = tmp_path / "p.json"
    assert main(["profile", *SMALL, "--json", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_interrupted_plot_save_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    result = profile(_tiny(), (1, 3, 32, 32), iters=1, warmup=0, ceiling=FAKE,
                     count_kernels=False)

    def savefig(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(KeyboardInterrupt):
        plot_profiles([result], tmp_path / "stages.png")
    assert list(tmp_path.iterdir()) == []


def test_cuda_without_a_gpu_is_refused_before_remeasuring(capsys, monkeypatch):
    # --remeasure probed first and ended with torch's "Found no NVIDIA driver on your system...".
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    err = _profile_err(capsys, "--device", "cuda", "--remeasure")
    assert err == "regnet-ext profile: --device: cuda requested but torch.cuda.is_available() is False"


def test_plot_with_a_schedule_says_it_draws_one_run(tmp_path, capsys, no_probe):
    # README: --plot draws stock and fused; with --schedule it drew one run without a word.
    png = tmp_path / "p.png"
    assert main(["profile", *SMALL, "--schedule", "ours", "--plot", str(png)]) == 0
    err = capsys.readouterr().err
    assert "--plot: profiling the stock model only; --schedule ours" in err
    assert png.stat().st_size > 0
