"""`regnet-ext train` end to end on a tiny custom RegNet and the digits data at 8x8."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile

import pytest
import torch

from regnet_ext.cli import main

pytest.importorskip("sklearn")
TINY = ["--w0", "8", "--wa", "8", "--wm", "2", "--depth", "2", "--group-width", "8",
        "--resolution", "8", "--batch-size", "64", "--no-progress"]


@pytest.fixture(autouse=True)
def _malloc_tuning(recorded_malloc_tuning):
    """The command tunes malloc by default: recorded, not applied (see conftest.py)."""
    return recorded_malloc_tuning


def run_json(capsys, *extra):
    assert main(["train", *TINY, *extra, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_reported_accuracy_is_the_checkpointed_models_accuracy(tmp_path, capsys):
    from regnet_ext.models import regnet
    from regnet_ext.training import load_checkpoint, load_dataset

    path = tmp_path / "tiny.pt"
    report = run_json(capsys, "--epochs", "2", "--checkpoint", str(path))
    assert report["model"].startswith("RegNetX(w0=8") and report["epochs"] == 2
    assert len(report["history"]) == 2 and report["world_size"] == 1
    assert report["train_size"] == 1438 and report["val_size"] == 359

    # Independent evaluation: rebuild the architecture, load the saved weights, count hits.
    model = regnet(w0=8, wa=8, wm=2, depth=2, group_width=8, num_classes=10)
    model.load_state_dict(load_checkpoint(path)["model"])
    model.eval()
    val = load_dataset("digits", resolution=8, split="val")
    with torch.no_grad():
        images, labels = val.tensors()
        hits = (model(images).argmax(1) == labels).sum().item()
    assert report["top1_acc"] == pytest.approx(100.0 * hits / len(val), abs=1e-9)
    assert report["params"] == sum(p.numel() for p in model.parameters())

    # Resuming a finished run trains nothing and reports the same result.
    again = run_json(capsys, "--epochs", "2", "--checkpoint", str(path), "--resume")
    assert again["resumed_from_epoch"] == 2 and again["top1_acc"] == report["top1_acc"]


def test_standard_model_by_name_and_table_output(capsys):
    assert main(["train", "--model", "regnetx_002", "--resolution", "8", "--epochs", "1",
                 "--batch-size", "1024", "--no-progress", "--tune-malloc"]) == 0
    out = capsys.readouterr().out
    assert "RegNetX-200MF" in out and "top-1" in out and "accuracy" in out
    # Flops are multiply-adds, as `regnet-ext models` says; one epoch is "1 epoch".
    assert "M multiply-adds/image at 8x8" in out and "FLOPs" not in out
    assert "recipe  1 epoch, batch 1024" in out and "warmup 1 epoch\n" in out


@pytest.mark.parametrize("argv, message", [
    (["--w0", "8", "--wa", "8"], "--wm: a custom RegNet needs"),
    (["--se-ratio", "0.25"], "--w0: a custom RegNet needs"),
    (["--model", "RegNetX-200MF", "--w0", "48"],
     "--w0: RegNetX-200MF has w0=24, got 48; leave --model out"),
    (["--resume"], "--resume: needs --checkpoint"),
    (["--data", "/no/such/folder"], "--data: expected 'digits' or a directory"),
    (["--device", "tpu"], "--device: expected cpu, cuda or auto"),
    (["--model", "RegNetZ-1GF"], "--model: unknown RegNet model"),
    (["--resolution", "0"], "--resolution: expected a positive integer, got 0"),
    (["--resolution", "8", "--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["--resolution", "8", "--batch-size", "4096"], "--batch-size: 4096 is larger than"),
    (["--resolution", "8", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["--resolution", "8", "--lr", "0"], "--lr: expected lr > 0"),
    (["--resolution", "8", "--lr", "inf"], "--lr: expected lr > 0 and finite, got inf"),
    (["--resolution", "8", "--lr", "nan"], "--lr: expected lr > 0 and finite, got nan"),
    (["--resolution", "8", "--weight-decay", "inf"],
     "--weight-decay: expected >= 0 and finite, got inf"),
    (["--resolution", "8", "--workers", "-1"], "--workers: expected an integer >= 0"),
    (["--device", "cpu", "--sync-bn"], "--sync-bn: SyncBatchNorm needs CUDA"),
])
def test_bad_arguments_fail_with_a_message_naming_the_option(argv, message, capsys):
    assert main(["train", "--epochs", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"regnet-ext train: error: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize("empty", ["train/a", "val/a"])
def test_image_folder_without_images_fails_with_a_message(empty, tmp_path, capsys):
    pytest.importorskip("torchvision")
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        if f"{split}/a" != empty:
            Image.new("RGB", (8, 8)).save(tmp_path / split / "a" / "0.png")
    assert main(["train", *TINY, "--epochs", "1", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"regnet-ext train: error: --data: {tmp_path / empty[:-2]}: Found no "
                          "valid file for the classes a"), err


@pytest.mark.parametrize("val_classes", [("a", "c"), ("a", "b", "c", "d")])
def test_image_folder_with_other_val_classes_fails_with_a_message(val_classes, tmp_path, capsys):
    pytest.importorskip("torchvision")
    from PIL import Image

    for split, classes in {"train": ("a", "b", "c"), "val": val_classes}.items():
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "0.png")
    assert main(["train", *TINY, "--epochs", "1", "--batch-size", "2", "--data",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"regnet-ext train: error: --data: {str(tmp_path)!r}: train/ and val/ must have "
                   f"the same class folders, got train/ ['a', 'b', 'c'] and val/ "
                   f"{list(val_classes)}\n"), err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A one-epoch checkpoint of TINY (8 px); tests resume copies of it."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    assert main(["train", *TINY, "--epochs", "1", "--checkpoint", str(path)]) == 0
    return path


@pytest.mark.parametrize("argv, written, requested", [
    (["--resolution", "12"], "--resolution 8", "--resolution 12"),
    (["--lr", "0.05"], "--lr 0.02", "--lr 0.05"),
    (["--warmup-epochs", "0.5"], "--warmup-epochs 1.0", "--warmup-epochs 0.5"),
    # Another architecture: named, not load_state_dict's traceback.
    (["--se-ratio", "0.25"], "--model RegNetX(w0=8", "--model RegNetY(w0=8"),
])
def test_resume_refuses_other_options_naming_them(argv, written, requested, tiny_checkpoint,
                                                  tmp_path, capsys):
    path = tmp_path / "run.pt"
    path.write_bytes(tiny_checkpoint.read_bytes())
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "1", "--checkpoint", str(path), "--resume",
                 *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"regnet-ext train: error: --resume: the checkpoint {str(path)!r} was "
                          f"written with {written}") and err.count("\n") == 1, err
    assert f"but this run has {requested}" in err and "new --checkpoint path" in err
    assert path.read_bytes() == tiny_checkpoint.read_bytes()  # left as it was


def test_resume_refuses_a_standard_model_of_another_name(tmp_path, capsys):
    path = tmp_path / "x.pt"
    common = ["--resolution", "8", "--epochs", "1", "--batch-size", "1024", "--no-progress",
              "--checkpoint", str(path)]
    assert main(["train", "--model", "RegNetX-200MF", *common]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "RegNetY-200MF", *common, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err == (f"regnet-ext train: error: --resume: the checkpoint {str(path)!r} was written "
                   "with --model RegNetX-200MF but this run has --model RegNetY-200MF; use the "
                   "same options or a new --checkpoint path\n"), err


@pytest.mark.parametrize("content", ["truncated", "text"])
def test_unreadable_checkpoint_fails_with_a_message(content, tiny_checkpoint, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        path.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    else:
        path.write_text("not a checkpoint\n")
    capsys.readouterr()
    assert main(["train", *TINY, "--epochs", "1", "--checkpoint", str(path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"regnet-ext train: error: --checkpoint: {str(path)!r} is not a "
                          "readable regnet_ext training checkpoint (") and err.count("\n") == 1, err


@pytest.mark.parametrize("where", ["directory", "under a file", "read-only"])
def test_unwritable_checkpoint_path_fails_before_training(where, tmp_path, monkeypatch, capsys):
    import regnet_ext.training

    monkeypatch.setattr(regnet_ext.training, "fit", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "file").write_text("")
    path = {"directory": tmp_path, "under a file": tmp_path / "file" / "sub" / "x.pt",
            "read-only": tmp_path / "ro" / "new" / "x.pt"}[where]
    if where == "read-only":
        (tmp_path / "ro").mkdir()
        real = tempfile.TemporaryFile

        def refuse(*args, dir=None, **kwargs):  # root may write anywhere chmod allows: simulate
            if dir is not None and os.fspath(dir) == os.fspath(tmp_path / "ro"):
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    assert main(["train", *TINY, "--epochs", "1", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    expected = {"directory": f"{str(path)!r} is a directory; expected a file path",
                "under a file": f"cannot write {str(path)!r}: {str(tmp_path / 'file')!r} is not a "
                                "directory",
                "read-only": f"cannot write {str(path)!r}: {str(tmp_path / 'ro')!r} is not "
                             "writable"}[where]
    assert err == f"regnet-ext train: error: --checkpoint: {expected}\n", err


def test_checkpoint_in_a_new_folder_is_written(tmp_path, capsys):
    path = tmp_path / "new" / "sub" / "x.pt"
    assert main(["train", *TINY, "--epochs", "1", "--checkpoint", str(path)]) == 0
    assert path.is_file()


def test_divergence_fails_with_a_one_line_message(capsys):
    # The default model at this lr: the loss is nan within the first epoch.
    assert main(["train", "--resolution", "8", "--epochs", "1", "--batch-size", "256",
                 "--no-progress", "--lr", "1e4"]) == 1
    err = capsys.readouterr().err
    assert err == ("regnet-ext train: error: training diverged: the loss is nan (try a smaller "
                   "--lr)\n"), err


def test_fused_without_kernels_fails_with_a_message(monkeypatch, capsys):
    from regnet_ext import _extension

    monkeypatch.setattr(_extension, "load", lambda: False)  # as if the extension were missing
    assert main(["train", *TINY, "--epochs", "1", "--fused"]) == 2
    assert "--fused" in capsys.readouterr().err


@pytest.mark.parametrize("flag, applied, warned", [
    ([], True, False), (["--tune-malloc"], True, True), (["--no-tune-malloc"], False, False)])
def test_malloc_tuning_is_on_by_default_and_warns_only_when_asked_for(flag, applied, warned, capsys, monkeypatch):
    import regnet_ext.allocator as allocator

    calls = []
    monkeypatch.setattr(allocator, "tune_malloc", lambda **kw: calls.append(kw) or False)  # as on a non-glibc libc
    assert main(["train", *TINY, "--epochs", "1", *flag]) == 0
    assert calls == ([{"use_mmap": False}] if applied else [])
    assert ("malloc is not glibc's" in capsys.readouterr().err) == warned


def test_an_existing_checkpoint_without_resume_is_refused_before_training(tmp_path, monkeypatch,
                                                                          capsys):
    import regnet_ext.training

    monkeypatch.setattr(regnet_ext.training, "fit", lambda *a, **k: pytest.fail("trained"))
    path = tmp_path / "run.pt"
    path.write_bytes(b"an earlier run")
    assert main(["train", *TINY, "--epochs", "1", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"regnet-ext train: error: --checkpoint: {str(path)!r} exists; pass --resume "
                   "to continue from it, or remove it or choose another path\n"), err
    assert path.read_bytes() == b"an earlier run"


# `regnet-ext train` in which torch.save (the first ARGV entry "save") or the third training
# step's input transfer ("step") prints a line, then waits for a signal.
_PAUSED_TRAIN = """
import sys, time, torch
import regnet_ext.training.loop as loop
where = sys.argv.pop(1)
def pause():
    print("paused", flush=True)
    time.sleep(120)
if where == "save":
    real_save = torch.save
    def save_then_wait(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the temporary file is written, not renamed yet
        pause()
    torch.save = save_then_wait
else:
    real_to_device, calls = loop._to_device, []
    def to_device_then_wait(*args):
        calls.append(1)
        if len(calls) == 3:  # mid-epoch: the DataLoader workers are running
            pause()
        return real_to_device(*args)
    loop._to_device = to_device_then_wait
from regnet_ext.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _paused_train(where, *argv):
    """`regnet-ext train *argv` in a process group of its own, paused at ``where``: the process,
    once it has paused."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_TRAIN, where, "train", *TINY,
                             "--no-tune-malloc", *argv], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    line = proc.stdout.readline()  # "" if the process ended first
    if line != "paused\n":
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the run did not pause: {proc.communicate(timeout=60)}")
    return proc


def _stopped(proc, signum, whole_group=False):
    """(exit status, stderr) of ``proc`` after ``signum``, sent to it or to its process group."""
    try:
        if whole_group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_while_a_checkpoint_is_written_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "run.pt"
    proc = _paused_train("save", "--epochs", "1", "--checkpoint", str(path))
    assert [p.name for p in tmp_path.iterdir()] == [f"run.pt.tmp.{socket.gethostname()}.{proc.pid}"]
    code, err = _stopped(proc, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert list(tmp_path.iterdir()) == [], err  # neither a temporary file nor a checkpoint


@pytest.mark.slow
def test_sigterm_to_the_process_group_ends_a_run_with_dataloader_workers_quietly():
    # The workers die of the same SIGTERM: the main process must not report them as failed
    # (a RuntimeError traceback, or one from torch's SIGCHLD handler).
    proc = _paused_train("step", "--epochs", "1", "--workers", "2", "--batch-size", "16")
    code, err = _stopped(proc, signal.SIGTERM, whole_group=True)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err and "Error" not in err, err
