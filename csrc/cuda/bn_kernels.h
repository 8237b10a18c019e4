// Launchers of conv_bn_act's BatchNorm-side CUDA kernels (bn_kernels.cu): per-channel affine
// coefficients, weight packing, per-channel reductions over NHWC rows with their finalisation,
// the elementwise epilogue/apply pass, the backward's passes and the running-statistics update.
// All take raw pointers; NHWC tensors are [rows, channels] with rows = N * H * W.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/element_type.h"
#include "kernels/bn_stats.h"
#include "kernels/conv_bn_act.h"

namespace regnet_ext::cuda {

using Affine = kernels::ChannelAffine<float>;
using Moments = kernels::MomentStats<float>;
using GradSums = kernels::BnGradSums<float>;

// Per-channel coefficients of the backward, from the statistics BN normalised with.
struct BnBackwardCoef {
  float mean, invstd, scale;   // scale = gamma * invstd
  float sum_g, sum_g_xhat;     // sums over the rows
  float mean_g, mean_g_xhat;   // the same divided by the row count
};

// Rows of the NHWC tensor one block reduces (rows of the partial buffers = ceil(rows / this)).
inline constexpr int64_t kRowChunk = 512;
inline int64_t row_chunks(int64_t rows) { return (rows + kRowChunk - 1) / kRowChunk; }

// affine[c] = bn_fold(gamma, beta, running_mean, running_var, eps, conv_bias) (eval), or, when
// gamma is nullptr, {1, conv_bias} (conv_bias nullptr = 0): the training conv pass's z = conv + b.
// Parameters have the activations' element type.
void launch_channel_affine(const void* gamma, const void* beta, const void* running_mean,
                           const void* running_var, const void* conv_bias, double eps,
                           int64_t channels, ElementType dtype, Affine* affine, cudaStream_t stream);

// packed[conv_pack_index(g, co, ci, kh, kw)] = weight[co][ci][kh][kw] as float.
void launch_pack_weight(const void* weight, const kernels::ConvGeometry& g, ElementType dtype,
                        float* packed, cudaStream_t stream);

// Moments of z per (row chunk, channel): partials [row_chunks(rows), channels].
void launch_moments_partials(const void* z, int64_t rows, int64_t channels, ElementType dtype,
                             Moments* partials, cudaStream_t stream);

// Merges partial moments per channel (in partial-row order), writes the batch mean and biased
// variance (float) and the training affine bn_affine(gamma, beta, mean, inv_std(var, eps)).
void launch_finalize_moments(const Moments* partials, int64_t partial_rows, int64_t channels,
                             const void* gamma, const void* beta, double eps, ElementType dtype,
                             float* mean, float* var, Affine* affine, cudaStream_t stream);

// y = conv_epilogue(z, affine[c], residual, relu) over [rows, channels]; y may alias z.
void launch_apply_epilogue(const void* z, const Affine* affine, const void* residual, bool relu,
                           int64_t rows, int64_t channels, ElementType dtype, void* y,
                           cudaStream_t stream);

// Backward pass 1: g = relu_grad(dy, y) (stored), partial sums of g and g * x-hat (x-hat from z,
// mean and var; z == nullptr skips the x-hat sums, as in eval).
void launch_grad_partials(const void* dy, const void* y, const void* z, const float* mean,
                          const float* var, double eps, bool relu, int64_t rows, int64_t channels,
                          ElementType dtype, void* g, GradSums* partials, cudaStream_t stream);

// Merges the grad partials and derives the per-channel backward coefficients. mean/var are the
// statistics BN normalised with (batch, or running in eval), as float.
void launch_finalize_grad(const GradSums* partials, int64_t partial_rows, int64_t channels,
                          int64_t rows, const float* mean, const float* var, const void* gamma,
                          double eps, ElementType dtype, BnBackwardCoef* coef, cudaStream_t stream);

// Backward pass 2 (training): dz = bn_train_input_grad(g, x-hat, ...), with partial sums of dz
// (sum_g of the partials) for the conv bias's gradient.
void launch_train_input_grad(const void* g, const void* z, const BnBackwardCoef* coef, int64_t rows,
                             int64_t channels, ElementType dtype, void* dz, GradSums* partials,
                             cudaStream_t stream);

// Sums the partial rows' sum_g per channel into out[c] (float).
void launch_sum_partials(const GradSums* partials, int64_t partial_rows, int64_t channels, float* out,
                         cudaStream_t stream);

// BN parameter gradients (float [channels] each): training: dgamma = sum(g x-hat), dbeta = sum(g),
// dbias = sum(dz); eval: dgamma = bn_fold_gamma_grad(raw_dot_w, ...), dbeta = sum(g),
// dbias = sum(g) * scale. conv_bias may be nullptr (zero); in training raw_dot_w is unused.
void launch_bn_param_grads(const BnBackwardCoef* coef, const float* raw_dot_w, const float* sum_dz,
                           const void* conv_bias, bool training, int64_t channels, ElementType dtype,
                           float* dgamma, float* dbeta, float* dbias, cudaStream_t stream);

// nn.BatchNorm2d's running update in place (running stats of `running_dtype`, 0 float32,
// 1 float16, 2 bfloat16, 3 float64); factor = momentum, or 1 / *num_batches_tracked (read on the
// device, no sync) when num_batches_tracked != nullptr.
void launch_update_running_stats(void* running_mean, void* running_var, int running_dtype,
                                 const double* batch_mean, const double* batch_var, int64_t channels,
                                 int64_t count, double momentum, const int64_t* num_batches_tracked,
                                 cudaStream_t stream);

}  // namespace regnet_ext::cuda
