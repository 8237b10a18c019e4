"""regnet_ext.deploy: aoti_package records what its package takes, load_package checks every call
against it and gives the package the memory format it reads. Without the checks a fused model's
package returns wrong logits for an NCHW batch (AOTInductor reads its input with the strides it
was compiled for) and a static package truncates a larger batch."""
import json
import os
import subprocess
import sys

import pytest
import torch

from regnet_ext.deploy import INPUT_KEY, aoti_package, load_package
from test_fuse_export import images, rel_close, run_package_in_a_new_process, small_pair

CL = torch.channels_last


@pytest.fixture(scope="module")
def fused_package(tmp_path_factory):
    """(package path, stock model): a fused model exported from channels_last images, batches 1..4."""
    stock, fused = small_pair()
    stock, fused = stock.eval().to(memory_format=CL), fused.eval().to(memory_format=CL)
    path = tmp_path_factory.mktemp("deploy") / "fused.pt2"
    aoti_package(fused, images(2).contiguous(memory_format=CL), path, max_batch=4)
    return path, stock


def test_the_package_records_its_input(fused_package):
    path, _ = fused_package
    package = load_package(path)
    assert package.input == {"channels": 3, "height": 32, "width": 32, "dtype": "float32",
                             "min_batch": 1, "max_batch": 4, "channels_last": True}
    assert json.loads(package.runner.get_metadata()[INPUT_KEY]) == package.input


def test_nchw_and_channels_last_batches_get_the_stock_output(fused_package):
    path, stock = fused_package
    package = load_package(path)
    for n in (1, 3, 4):
        x = images(n, seed=n)  # NCHW: the package reads channels_last
        with torch.no_grad():
            expected = stock(x)
            rel_close(package(x), expected, 1e-5)
            rel_close(package(x.contiguous(memory_format=CL)), expected, 1e-5)


@pytest.mark.parametrize("bad, error", [
    (lambda: images(5), "images: .* takes \\[1..4, 3, 32, 32\\] float32 on the CPU, got \\[5, 3, 32, 32\\]"),
    (lambda: images(2, size=40), "got \\[2, 3, 40, 40\\]"),
    (lambda: images(2).double(), "got \\[2, 3, 32, 32\\] float64"),
    (lambda: images(2)[:, :1], "got \\[2, 1, 32, 32\\]"),
    (lambda: torch.randn(3, 32, 32), "got \\[3, 32, 32\\]"),
])
def test_inputs_the_package_was_not_compiled_for_are_refused(fused_package, bad, error):
    package = load_package(fused_package[0])
    with pytest.raises(ValueError, match=error):
        package(bad())
    with pytest.raises(TypeError, match="images: expected a tensor"):
        package([1, 2])


def test_a_package_without_the_record_or_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="path: no package file"):
        load_package(tmp_path / "none.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip archive")  # torch's error named no file
    with pytest.raises(ValueError, match="path: '.*junk.pt2' is not an AOTInductor package"):
        load_package(tmp_path / "junk.pt2")
    stock, _ = small_pair()
    raw = torch._inductor.aoti_compile_and_package(torch.export.export(stock.eval(), (images(2),)),
                                                   package_path=str(tmp_path / "raw.pt2"))
    with pytest.raises(ValueError, match="has no record of its input"):
        load_package(raw)


def test_aotis_own_runtime_check_refuses_nchw_and_accepts_batch_one(fused_package, tmp_path):
    # For runners outside Python (C++): AOTI_RUNTIME_CHECK_INPUTS=1 checks strides and the batch
    # range; check_lowerbound=False in aoti_package keeps batch 1 inside it.
    path, _ = fused_package
    code = ("import torch, regnet_ext.ops\n"
            f"runner = torch._inductor.aoti_load_package({str(path)!r})\n"
            "x = torch.randn(1, 3, 32, 32).contiguous(memory_format=torch.channels_last)\n"
            "with torch.no_grad():\n"
            "    print(tuple(runner(x).shape))\n"
            "    try:\n        runner(torch.randn(2, 3, 32, 32))\n"
            "    except Exception as exc:\n        print('refused:', str(exc).splitlines()[0])\n")
    env = dict(os.environ, AOTI_RUNTIME_CHECK_INPUTS="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(1, 10)" in done.stdout and "refused:" in done.stdout, done.stdout


def test_aoti_package_refuses_bad_arguments_before_exporting(tmp_path):
    model = small_pair()[1].eval()
    x2 = images(2)
    for call, error in [
        (lambda: aoti_package(model, x2, tmp_path / "m.onnx"), "path: an AOTInductor package's name ends in .pt2"),
        (lambda: aoti_package(model, x2, tmp_path / "no" / "m.pt2"), "path: the folder"),
        (lambda: aoti_package(model, x2[0], tmp_path / "m.pt2"), "example: expected an image batch"),
        (lambda: aoti_package(model, x2, tmp_path / "m.pt2", max_batch=1), "max_batch: a dynamic batch goes up to 2"),
        (lambda: aoti_package(model, images(1), tmp_path / "m.pt2", max_batch=8), "example: a dynamic batch needs"),
    ]:
        with pytest.raises(ValueError, match=error):
            call()


def test_a_bfloat16_package_serves_in_a_new_process(tmp_path):
    # load_package in a fresh interpreter (it loads the operators itself), float32 images in,
    # bfloat16 handed over: within the 16-bit rule against the stock model in float64.
    import copy

    from tolerances import assert_close_to_reference

    stock, fused = small_pair()
    stock, fused = stock.eval(), fused.eval().to(memory_format=CL)
    path = aoti_package(fused.to(torch.bfloat16), images(2).to(torch.bfloat16).contiguous(memory_format=CL),
                        tmp_path / "bf16.pt2", max_batch=4)
    x = images(3, seed=7)
    [y] = run_package_in_a_new_process(path, [x.bfloat16()], tmp_path, through_load_package=True)
    assert y.dtype == torch.bfloat16
    with torch.no_grad():
        reference = copy.deepcopy(stock).double()(x.double())
        plain = copy.deepcopy(stock).to(torch.bfloat16)(x.bfloat16())
    assert_close_to_reference(y, reference, plain_torch=plain, name="bfloat16 package")
