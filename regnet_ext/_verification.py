"""Whether the CUDA kernels have ever run on a GPU. Changed by hand, in the commit that records a
GPU run of `make test-gpu` in benchmarks/results/, never by code. A record of the release's
kernels, not of a build: `regnet-ext info` shows it only for builds with CUDA kernels."""
CUDA_KERNELS_GPU_VERIFIED = True
CUDA_VERIFICATION = ("CUDA kernels ran on an NVIDIA H200 (sm_90, torch 2.11.0+cu130, CUDA 13.0) on 2026-12-04: "
                     "the CUDA test suite passed (218 tests) and `regnet-ext selfcheck --device cuda` passed every "
                     "operator in float32, float16 and bfloat16 (benchmarks/results/h200/). No other GPU has been "
                     "tried: run `regnet-ext selfcheck --device cuda` on yours before relying on them.")
