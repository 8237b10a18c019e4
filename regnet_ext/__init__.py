"""regnet_ext: RegNet models, fused conv+BN+ReLU and squeeze-excite kernels (CPU and CUDA),
fuse(), deployment as AOTInductor packages (regnet_ext.deploy), a per-stage profiler and the
paper's design-space tools.

Models (regnet_ext.models) run on stock PyTorch; the fused operators (regnet_ext.ops) need the
compiled extension."""
__version__ = "0.1.0"

_LAZY = {"fuse": "nn", "unfuse": "nn", "profile": "profiling"}


def __getattr__(name):
    # Lazy, so that `import regnet_ext` (and the models) work without the compiled extension.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'regnet_ext' has no attribute {name!r}")


__all__ = ["__version__", "fuse", "unfuse", "profile"]
