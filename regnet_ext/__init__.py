"""regnet_ext: RegNet models, fused conv+BN+ReLU and squeeze-excite kernels (CPU and CUDA),
fuse(), a per-stage profiler and the paper's design-space tools.

Models (regnet_ext.models) run on stock PyTorch; the fused operators (regnet_ext.ops) need the
compiled extension."""
__version__ = "0.1.0"
