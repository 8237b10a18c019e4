"""Whether the CUDA kernels have ever run on a GPU. Changed by hand, in the commit that records a
GPU run of `make test-gpu` in benchmarks/results/, never by code."""
CUDA_KERNELS_GPU_VERIFIED = False
CUDA_VERIFICATION = ("CUDA kernels are compiled and their shared math is verified on the CPU; "
                     "they have NOT yet been run on a GPU. Run `regnet-ext selfcheck --device cuda` "
                     "before relying on them.")
