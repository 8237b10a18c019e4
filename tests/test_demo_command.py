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


@pytest.mark.parametrize("argv, message", [
    (["--model", "foo"], "--model: unknown RegNet model 'foo'"),
    (["--device", "tpu"], "--device: expected cpu, cuda or auto, got 'tpu'"),
    (["--batch", "0"], "--batch: expected an int >= 1, got 0"),
    (["--resolution", "0"], "--resolution: expected an int >= 1, got 0"),
    (["--iters", "0"], "--iters: expected an int >= 1, got 0"),
    (["--rounds", "0"], "--rounds: expected an int >= 1, got 0"),
])
def test_bad_arguments_fail_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", *argv, "--out", str(out), "--no-tune-malloc"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()  # no model table, no files
    assert captured.err.startswith(f"regnet-ext demo: {message}") and captured.err.count("\n") == 1


def test_an_out_that_cannot_be_a_folder_fails_before_any_work(tmp_path, capsys):
    # It was a FileExistsError traceback from mkdir.
    taken = tmp_path / "results.json"
    taken.write_text("{}")
    assert main(["demo", "--out", str(taken), "--no-tune-malloc"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and taken.read_text() == "{}"
    assert captured.err == f"regnet-ext demo: --out: cannot make the folder {taken} (a file is there)\n"
    assert main(["demo", "--out", str(taken / "sub"), "--no-tune-malloc"]) == 2
    assert capsys.readouterr().err.startswith(f"regnet-ext demo: --out: cannot make the folder {taken / 'sub'} (")


def test_cuda_without_a_gpu_fails_before_any_work(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["demo", "--device", "cuda", "--no-tune-malloc"]) == 2
    assert capsys.readouterr().err == ("regnet-ext demo: --device: cuda requested but "
                                       "torch.cuda.is_available() is False\n")


def test_help_says_what_the_demo_does(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "list the 24 standard models" in text and "RegNetY-400MF (or --model)" in text
    assert "PNG and JSON files to --out" in text
