"""`regnet-ext export`: a fused RegNet as an AOTInductor package that serves in a new process,
with weights from a state_dict or a training checkpoint; bad arguments refused before any work."""
import json

import pytest
import torch

from regnet_ext.cli import main
from regnet_ext.commands.export import classes_in, load_state
from regnet_ext.deploy import INPUT_KEY, load_package
from regnet_ext.models import regnet
from test_cli_errors import run_without_extension
from test_fuse_export import run_package_in_a_new_process


def _trained_like(num_classes=10):
    """RegNetY-200MF with random weights and non-trivial BN statistics, as a trained one has."""
    torch.manual_seed(0)
    model = regnet("RegNetY-200MF", num_classes=num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.slow
def test_the_package_serves_in_a_new_process_with_the_given_weights(tmp_path, capsys):
    model = _trained_like()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    out = tmp_path / "model.pt2"
    assert main(["export", "--model", "RegNetY-200MF", "--weights", str(tmp_path / "weights.pt"),
                 "--resolution", "32", "--max-batch", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "max relative difference to the stock model" in printed.out and "load_package" in printed.out
    assert "[1..8, 3, 32, 32] float32" in printed.out
    assert "13 FusedResBottleneck" in printed.err
    x = torch.randn(5, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    [y] = run_package_in_a_new_process(out, [x], tmp_path, through_load_package=True)
    with torch.no_grad():
        expected = model(x)
    assert y.shape == (5, 10)  # the class count read from the weights
    assert (y - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_weights_load_from_a_state_dict_or_a_training_checkpoint(tmp_path):
    state = _trained_like(7).state_dict()
    torch.save(state, tmp_path / "state.pt")
    torch.save({"format_version": 1, "model": state, "epoch": 3, "settings": {"lr": 0.1}}, tmp_path / "ckpt.pt")
    for name in ("state.pt", "ckpt.pt"):
        loaded, record = load_state(tmp_path / name)
        assert loaded.keys() == state.keys() and classes_in(loaded) == 7 and record is None
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="--weights: .* holds no state_dict"):
        load_state(tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module, not tensors
    for name in ("text.pt", "empty.pt", "module.pt"):
        with pytest.raises(ValueError, match="--weights: cannot read .* as a torch.save file of tensors"):
            load_state(tmp_path / name)


@pytest.mark.parametrize("extra, message", [
    (["--out", "model.onnx"], "--out: an AOTInductor package's name ends in .pt2"),
    (["--out", "{tmp}"], "is a directory"),
    (["--out", "{tmp}/no/such/model.pt2"], "--out: the folder"),
    (["--out", "{tmp}/m.pt2", "--weights", "{tmp}/missing.pt"], "--weights: "),
    (["--out", "{tmp}/m.pt2", "--weights", "{tmp}"], "is not a file"),
    (["--out", "{tmp}/m.pt2", "--resolution", "0"], "--resolution: expected an int >= 1, got 0"),
    (["--out", "{tmp}/m.pt2", "--max-batch", "0"], "--max-batch: expected an int >= 1, got 0"),
    (["--out", "{tmp}/m.pt2", "--model", "RegNetZ-1GF"], "--model: unknown RegNet model"),
    (["--out", "{tmp}/m.pt2", "--model", "keras:regnet"], "--model: expected NAME, torchvision:NAME or timm:NAME"),
    (["--out", "{tmp}/m.pt2", "--model", "timm:nosuch"], "--model: timm has no model 'nosuch' (e.g. regnety_004)"),
])
def test_bad_arguments_are_refused_naming_the_option(tmp_path, capsys, extra, message):
    argv = ["export"] + [a.format(tmp=tmp_path) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("regnet-ext export: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.pt2").exists()


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path, capsys):
    torch.save(_trained_like().state_dict(), tmp_path / "y200.pt")
    assert main(["export", "--model", "RegNetX-200MF", "--weights", str(tmp_path / "y200.pt"),
                 "--out", str(tmp_path / "m.pt2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("regnet-ext export: --weights: does not fit --model RegNetX-200MF")
    assert not (tmp_path / "m.pt2").exists()


def test_without_the_extension_it_points_to_no_fuse(tmp_path):
    code = ("from regnet_ext.cli import main\n"
            f"raise SystemExit(main(['export', '--out', {str(tmp_path / 'm.pt2')!r}]))\n")
    done = run_without_extension(code)
    assert done.returncode == 2, done.stderr
    assert "the fused kernels are not available" in done.stderr and "--no-fuse" in done.stderr


@pytest.mark.slow
def test_a_bfloat16_package_is_checked_against_float64(tmp_path, capsys):
    out = tmp_path / "bf16.pt2"
    assert main(["export", "--model", "RegNetY-200MF", "--resolution", "32", "--max-batch", "4",
                 "--dtype", "bfloat16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max relative difference to the stock model in float64" in printed and "bfloat16" in printed
    assert "(batch 1 and 3)" in printed
    with torch.no_grad():
        y = load_package(out)(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (2, 1000)


def test_a_package_whose_output_is_off_fails_the_check(tmp_path, capsys, monkeypatch):
    # No compile: torch's compile and load replaced by a package that is the stock model, 1% off
    # (the check under test is export's, after the load).
    import torch._inductor as inductor

    def write_without_compiling(program, package_path, inductor_configs):
        with open(package_path, "wb") as f:
            f.write(b"not compiled")
        return package_path

    class Off:
        def get_metadata(self):
            return {INPUT_KEY: json.dumps({"channels": 3, "height": 32, "width": 32, "dtype": "float32",
                                           "min_batch": 1, "max_batch": 256, "channels_last": True})}

        def __call__(self, x):
            return 1.01 * _trained_like(1000)(x)

    monkeypatch.setattr(inductor, "aoti_compile_and_package", write_without_compiling)
    monkeypatch.setattr(inductor, "aoti_load_package", lambda path: Off())
    monkeypatch.setattr("regnet_ext.profiling.profiler.build_model", lambda name, num_classes: _trained_like(1000))
    assert main(["export", "--model", "RegNetY-200MF", "--resolution", "32", "--out", str(tmp_path / "m.pt2")]) == 1
    err = capsys.readouterr().err
    assert "the package's output differs from the stock model's by 1.00e-02 at batch" in err
    assert "not fit to serve" in err


@pytest.mark.slow
def test_a_train_checkpoint_exports_its_own_model_and_resolution(tmp_path, capsys, recorded_malloc_tuning):
    # A custom RegNet (no name to give --model) trained on 8x8 digits: the checkpoint records
    # its AnyNetSpec and resolution, which export takes when --model and --resolution are left out.
    pytest.importorskip("sklearn")
    from regnet_ext.models import AnyNet, AnyNetSpec
    from regnet_ext.training import load_checkpoint

    checkpoint = tmp_path / "tiny.pt"
    assert main(["train", "--w0", "8", "--wa", "8", "--wm", "2", "--depth", "2", "--group-width", "8",
                 "--resolution", "8", "--batch-size", "64", "--epochs", "1", "--no-progress",
                 "--checkpoint", str(checkpoint)]) == 0
    saved = load_checkpoint(checkpoint)
    assert saved["settings"]["model"]["resolution"] == 8
    capsys.readouterr()
    out = tmp_path / "tiny.pt2"
    assert main(["export", "--weights", str(checkpoint), "--max-batch", "4", "--out", str(out)]) == 0
    assert "[1..4, 3, 8, 8] float32" in capsys.readouterr().out
    model = AnyNet(AnyNetSpec(**saved["settings"]["model"]["spec"]))
    model.load_state_dict(saved["model"])
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
        y = load_package(out)(x)
    assert y.shape == (3, 10)
    assert (y - expected).abs().max() <= 1e-4 * expected.abs().max()



def test_a_train_checkpoints_resolution_is_the_default_with_model_given(tmp_path, monkeypatch):
    # With --model given, the package was compiled for 224 whatever resolution the checkpoint
    # recorded (the README: its model and resolution are the defaults of --model and --resolution).
    import regnet_ext.commands.export as export

    checkpoint = {"format_version": 1, "model": _trained_like().state_dict(),
                  "settings": {"model": {"spec": {}, "resolution": 48}}}
    torch.save(checkpoint, tmp_path / "run.pt")
    exported = []
    monkeypatch.setattr(export, "_export", lambda args, stock, model: exported.append(args) or 0)
    argv = ["export", "--model", "RegNetY-200MF", "--weights", str(tmp_path / "run.pt"), "--no-fuse",
            "--out", str(tmp_path / "m.pt2")]
    assert main(argv) == 0
    assert exported[-1].resolution == 48 and exported[-1].model == "RegNetY-200MF"
    assert main(argv + ["--resolution", "64"]) == 0
    assert exported[-1].resolution == 64
    torch.save(checkpoint["model"], tmp_path / "state.pt")  # a bare state_dict records none
    assert main(argv[:3] + ["--weights", str(tmp_path / "state.pt")] + argv[5:]) == 0
    assert exported[-1].resolution == 224
