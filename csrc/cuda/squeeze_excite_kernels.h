// Launchers of the squeeze-excite CUDA kernels (squeeze_excite_kernels.cu): raw pointers in,
// float workspaces, launched on the caller's stream with a launch check after each kernel.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/element_type.h"

namespace regnet_ext::cuda {

struct SeShapeCuda {
  int64_t batch, channels, hidden, pixels;
  bool channels_last;
};

// Pixel chunks per sample of the channels_last pooling passes (rows of the partial sums per sample).
int64_t se_pool_chunks(const SeShapeCuda& s);

// Forward pass 1: partial pooled sums, [N * chunks, C] float (chunks == 1 for NCHW).
void launch_se_pool(const void* x, const SeShapeCuda& s, ElementType dtype, float* partial,
                    cudaStream_t stream);

// Forward pass 2: one block per sample merges the partials into means and runs the MLP.
// w1 [C_se, C], w2 [C, C_se] and the biases are float; mean, z and gate are [N, *] float outputs.
void launch_se_excite(const float* partial, int64_t chunks, const float* w1, const float* b1,
                      const float* w2, const float* b2, const SeShapeCuda& s, float* mean, float* z,
                      float* gate, cudaStream_t stream);

// Forward pass 3: y = x * gate.
void launch_se_scale(const void* x, const float* gate, const SeShapeCuda& s, ElementType dtype,
                     void* y, cudaStream_t stream);

// Backward pass 1: partial sums of x and of dy * x in one read of both.
void launch_se_pool_and_gate_grad(const void* x, const void* dy, const SeShapeCuda& s,
                                  ElementType dtype, float* pool_partial, float* dgate_partial,
                                  cudaStream_t stream);

// Backward pass 2: per sample, recompute the MLP and differentiate it: dpre2 [N, C], dz [N, C_se],
// ds_mean [N, C] (d loss / d pooled mean, already divided by the pixel count).
void launch_se_excite_backward(const float* pool_partial, const float* dgate_partial,
                               int64_t chunks, const float* w1, const float* b1, const float* w2,
                               const float* b2, const SeShapeCuda& s, float* mean, float* z,
                               float* dpre2, float* dz, float* ds_mean, float* gate,
                               cudaStream_t stream);

// Backward pass 3: dx = dy * gate + ds_mean.
void launch_se_input_grad(const void* dy, const float* gate, const float* ds_mean,
                          const SeShapeCuda& s, ElementType dtype, void* dx, cudaStream_t stream);

// Largest channels + hidden the per-sample MLP kernels hold in shared memory.
inline constexpr int64_t kSeMaxMlpFloats = 12 * 1024;

}  // namespace regnet_ext::cuda
