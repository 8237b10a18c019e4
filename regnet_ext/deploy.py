"""Deployment without Python's model code: a model (fused or stock, in eval) as an AOTInductor
package, and a loader that checks what each call gives it.

An AOTInductor package reads its input with the shape range and strides it was compiled for and
does not check them (unless AOTI_RUNTIME_CHECK_INPUTS=1 is set where it runs): a fused RegNet's
package handed an NCHW batch after being exported from channels_last images returns wrong logits
without an error, a batch beyond a static batch of 1 comes back with one row, an image of another
size gives garbage or corrupts memory. aoti_package records what the package takes in its
metadata; load_package refuses anything else and gives the package the memory format it was
compiled for. C++ programs run the same packages through libregnet_ext_ops (CMakeLists.txt)."""
import json
import os

from ._paths import check_output_path

# The metadata entry aoti_package writes: a JSON object with the input's channels, height,
# width, dtype, min_batch, max_batch and channels_last.
INPUT_KEY = "regnet_ext.input"


def check_package_path(path, name="path"):
    """ValueError (naming the argument ``name``) unless ``path`` can be a new package file: a
    writable file path (_paths.check_output_path) with a .pt2 name."""
    path = os.fspath(path)
    check_output_path(name, path)
    if not path.endswith(".pt2"):
        raise ValueError(f"{name}: an AOTInductor package's name ends in .pt2, got {path!r}")


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def aoti_package(model, example, path, *, max_batch=None):
    """torch.export of ``model`` on ``example`` (one image batch, [N, C, H, W]), then an
    AOTInductor package with inductor's freezing at ``path`` (a .pt2 file name); returns ``path``.
    With ``max_batch`` (>= 2) the package takes any batch from 1 to max_batch (the example batch
    must then hold 2 or more: export specialises a dimension of size 1); without, only the
    example's batch size. The package takes the example's height, width, dtype and memory format."""
    import torch
    from torch._inductor import aoti_compile_and_package

    path = os.fspath(path)
    check_package_path(path)
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise ValueError(f"example: expected an image batch [N, C, H, W], got "
                         f"{tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__}")
    batch = example.shape[0]
    dynamic = None
    if max_batch is not None:
        if max_batch < 2:
            raise ValueError(f"max_batch: a dynamic batch goes up to 2 or more, got {max_batch}; "
                             f"for batches of 1 only, leave max_batch out and give a batch of 1")
        if not 2 <= batch <= max_batch:
            raise ValueError(f"example: a dynamic batch needs an example batch from 2 to max_batch "
                             f"({max_batch}), got {batch}")
        dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    channels_last = example.is_contiguous(memory_format=torch.channels_last)
    record = {"channels": example.shape[1], "height": example.shape[2], "width": example.shape[3],
              "dtype": _dtype_name(example.dtype), "min_batch": 1 if dynamic else batch,
              "max_batch": max_batch if dynamic else batch, "channels_last": channels_last}
    configs = {"freezing": True, "aot_inductor.metadata": {INPUT_KEY: json.dumps(record)},
               # So that AOTI_RUNTIME_CHECK_INPUTS=1 (C++ programs) accepts batches of 1: without
               # it the runtime check wants the [2, max] range export traced.
               "aot_inductor.check_lowerbound": False}
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        aoti_compile_and_package(program, package_path=path, inductor_configs=configs)
    return path


class Package:
    """A package written by aoti_package, loaded: call it with an image batch (under
    torch.no_grad()). Each call checks the batch against what the package was compiled for
    (`input`: channels, height, width, dtype, batch range) and hands it over in the memory format
    the package reads (a copy when the batch is in the other one)."""

    def __init__(self, path):
        from torch._inductor import aoti_load_package

        from . import _extension

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"path: no package file at {path!r}")
        _extension.load()  # registers the operators a fused model's package calls
        self.path = path
        try:
            self.runner = aoti_load_package(path)
        except RuntimeError as exc:  # torch's message ("Failed to initialize zip archive") names no file
            raise ValueError(f"path: {path!r} is not an AOTInductor package ({exc})") from None
        record = self.runner.get_metadata().get(INPUT_KEY)
        if record is None:
            raise ValueError(f"path: {path!r} has no record of its input (not written by "
                             f"regnet_ext.deploy.aoti_package); call torch._inductor.aoti_load_package instead")
        self.input = json.loads(record)

    def expected(self):
        i = self.input
        batches = i["min_batch"] if i["min_batch"] == i["max_batch"] else f"{i['min_batch']}..{i['max_batch']}"
        return f"[{batches}, {i['channels']}, {i['height']}, {i['width']}] {i['dtype']} on the CPU"

    def __call__(self, images):
        import torch

        i = self.input
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images: expected a tensor {self.expected()}, got {type(images).__name__}")
        shape = tuple(images.shape)
        if (images.dim() != 4 or shape[1:] != (i["channels"], i["height"], i["width"])
                or not i["min_batch"] <= shape[0] <= i["max_batch"]
                or _dtype_name(images.dtype) != i["dtype"] or images.device.type != "cpu"):
            raise ValueError(f"images: {self.path} takes {self.expected()}, got {list(shape)} "
                             f"{_dtype_name(images.dtype)} on {images.device}")
        layout = torch.channels_last if i["channels_last"] else torch.contiguous_format
        return self.runner(images.contiguous(memory_format=layout))


def load_package(path):
    """The package at ``path`` (written by aoti_package) as a callable that checks its input:
    Package. Loads the compiled operators first, which a fused model's package calls."""
    return Package(path)
