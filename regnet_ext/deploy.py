"""Deployment without Python's model code: a model (fused or stock, in eval) as an AOTInductor
package. The process that loads a fused model's package imports regnet_ext.ops first (it registers
the operators the package calls); C++ programs link libregnet_ext_ops (CMakeLists.txt)."""
import os


def aoti_package(model, example, path, *, max_batch=None):
    """torch.export of ``model`` on ``example`` (one image batch), then an AOTInductor package with
    inductor's freezing at ``path`` (a .pt2 file name); returns ``path``. With ``max_batch`` the
    package takes any batch from 1 to max_batch (give an example batch of 2 or more: export
    specialises a dimension of size 1); without, only the example's shape."""
    import torch
    from torch._inductor import aoti_compile_and_package

    path = os.fspath(path)
    if not path.endswith(".pt2"):
        raise ValueError(f"path: an AOTInductor package's name ends in .pt2, got {path!r}")
    dynamic = None
    if max_batch is not None:
        if example.shape[0] < 2:
            raise ValueError(f"example: a dynamic batch needs an example batch of 2 or more, got {example.shape[0]}")
        dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        aoti_compile_and_package(program, package_path=path, inductor_configs={"freezing": True})
    return path
