// CUDA kernels around conv_bn_act's convolutions: everything per channel or per element that the
// conv itself does not fuse. Arithmetic comes from kernels/bn_stats.h, kernels/conv_bn_act*.h;
// the per-channel reductions use column_allreduce (reductions.cuh): a block covers kRowChunk
// NHWC rows x 32 channels, lanes are channels (coalesced loads), warps interleave rows.
#include "cuda/bn_kernels.h"
#include "cuda/device_utils.cuh"
#include "cuda/reductions.cuh"
#include "kernels/conv_bn_act_backward.h"

namespace regnet_ext::cuda {
namespace k = regnet_ext::kernels;
namespace {

constexpr int kThreads = 256;
constexpr int kColumns = 32;
constexpr int kRowWarps = kThreads / kWarpSize;

__device__ __forceinline__ Moments merge_moments(Moments a, const Moments& b) {
  k::chan_merge(a, b);
  return a;
}
__device__ __forceinline__ GradSums merge_grad_sums(GradSums a, const GradSums& b) {
  k::bn_grad_sums_merge(a, b);
  return a;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
channel_affine_kernel(const T* gamma, const T* beta, const T* running_mean, const T* running_var,
                      const T* conv_bias, float eps, int64_t channels, Affine* affine) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += int64_t(gridDim.x) * blockDim.x) {
    const float b = conv_bias != nullptr ? static_cast<float>(conv_bias[c]) : 0.f;
    affine[c] = gamma == nullptr
                    ? Affine{1.f, b}
                    : k::bn_fold(static_cast<float>(gamma[c]), static_cast<float>(beta[c]),
                                 static_cast<float>(running_mean[c]), static_cast<float>(running_var[c]), eps, b);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
pack_weight_kernel(const T* weight, k::ConvGeometry g, float* packed) {
  const int64_t taps = g.kernel * g.kernel, total = g.out_c * g.in_c_per_group * taps;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t co = i / (g.in_c_per_group * taps), ci = (i / taps) % g.in_c_per_group;
    const int64_t kh = (i % taps) / g.kernel, kw = i % g.kernel;
    packed[k::conv_pack_index(g, co, ci, kh, kw)] = static_cast<float>(weight[i]);
  }
}

// Rows [chunk * kRowChunk, ...) of channel c handled by this thread: warp w takes rows w, w + 8, ...
struct RowRange {
  int64_t begin, end, step;
};
__device__ __forceinline__ RowRange thread_rows(int64_t rows) {
  const int64_t r0 = int64_t(blockIdx.x) * kRowChunk;
  return {r0 + threadIdx.x / kWarpSize, min(rows, r0 + kRowChunk), kRowWarps};
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
moments_partials_kernel(const T* z, int64_t rows, int64_t channels, Moments* partials) {
  __shared__ Moments slots[kRowWarps * kColumns];
  const int64_t c = int64_t(blockIdx.y) * kColumns + threadIdx.x % kWarpSize;
  Moments m = k::moment_stats_empty<float>();
  if (c < channels) {
    const RowRange rr = thread_rows(rows);
    for (int64_t r = rr.begin; r < rr.end; r += rr.step) k::welford_push(m, static_cast<float>(z[r * channels + c]));
  }
  m = column_allreduce<kColumns>(m, slots, merge_moments);
  if (threadIdx.x < kColumns && c < channels) partials[int64_t(blockIdx.x) * channels + c] = m;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
finalize_moments_kernel(const Moments* partials, int64_t partial_rows, int64_t channels, const T* gamma,
                        const T* beta, float eps, float* mean, float* var, Affine* affine) {
  __shared__ Moments slots[kRowWarps * kColumns];
  const int64_t c = int64_t(blockIdx.x) * kColumns + threadIdx.x % kWarpSize;
  Moments m = k::moment_stats_empty<float>();
  if (c < channels)
    for (int64_t r = threadIdx.x / kWarpSize; r < partial_rows; r += kRowWarps) k::chan_merge(m, partials[r * channels + c]);
  m = column_allreduce<kColumns>(m, slots, merge_moments);
  if (threadIdx.x < kColumns && c < channels) {
    const float v = k::biased_variance(m);
    mean[c] = m.mean;
    var[c] = v;
    affine[c] = k::bn_affine(static_cast<float>(gamma[c]), static_cast<float>(beta[c]), m.mean, k::inv_std(v, eps));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
apply_epilogue_kernel(const T* z, const Affine* affine, const T* residual, bool relu, int64_t rows,
                      int64_t channels, bool vec4, T* y) {
  const int64_t total = rows * channels, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (vec4) {
    for (int64_t q = first; q * 4 < total; q += stride) {
      float v[4], r[4] = {0.f, 0.f, 0.f, 0.f};
      load4_as_float(z + q * 4, v);
      if (residual != nullptr) load4_as_float(residual + q * 4, r);
      const int64_t c = (q * 4) % channels;
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = k::conv_epilogue(v[e], affine[c + e], r[e], relu);
      store4_from_float(y + q * 4, v);
    }
  } else {
    for (int64_t i = first; i < total; i += stride) {
      const float r = residual != nullptr ? static_cast<float>(residual[i]) : 0.f;
      y[i] = static_cast<T>(k::conv_epilogue(static_cast<float>(z[i]), affine[i % channels], r, relu));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
grad_partials_kernel(const T* dy, const T* y, const T* z, const float* mean, const float* var, float eps,
                     bool relu, int64_t rows, int64_t channels, T* g, GradSums* partials) {
  __shared__ GradSums slots[kRowWarps * kColumns];
  const int64_t c = int64_t(blockIdx.y) * kColumns + threadIdx.x % kWarpSize;
  GradSums s{0.f, 0.f};
  if (c < channels) {
    const float mu = z != nullptr ? mean[c] : 0.f, invstd = z != nullptr ? k::inv_std(var[c], eps) : 0.f;
    const RowRange rr = thread_rows(rows);
    for (int64_t r = rr.begin; r < rr.end; r += rr.step) {
      const int64_t i = r * channels + c;
      const float gv = k::relu_grad(static_cast<float>(dy[i]), static_cast<float>(y[i]), relu);
      g[i] = static_cast<T>(gv);
      const float gx = z != nullptr ? gv * k::normalized(static_cast<float>(z[i]), mu, invstd) : 0.f;
      k::bn_grad_sums_merge(s, GradSums{gv, gx});
    }
  }
  s = column_allreduce<kColumns>(s, slots, merge_grad_sums);
  if (threadIdx.x < kColumns && c < channels) partials[int64_t(blockIdx.x) * channels + c] = s;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
finalize_grad_kernel(const GradSums* partials, int64_t partial_rows, int64_t channels, int64_t rows,
                     const float* mean, const float* var, const T* gamma, float eps, BnBackwardCoef* coef) {
  __shared__ GradSums slots[kRowWarps * kColumns];
  const int64_t c = int64_t(blockIdx.x) * kColumns + threadIdx.x % kWarpSize;
  GradSums s{0.f, 0.f};
  if (c < channels)
    for (int64_t r = threadIdx.x / kWarpSize; r < partial_rows; r += kRowWarps) k::bn_grad_sums_merge(s, partials[r * channels + c]);
  s = column_allreduce<kColumns>(s, slots, merge_grad_sums);
  if (threadIdx.x < kColumns && c < channels) {
    const float invstd = k::inv_std(var[c], eps);
    coef[c] = BnBackwardCoef{mean[c], invstd, static_cast<float>(gamma[c]) * invstd,
                             s.sum_g, s.sum_g_xhat, s.sum_g / float(rows), s.sum_g_xhat / float(rows)};
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
train_input_grad_kernel(const T* g, const T* z, const BnBackwardCoef* coef, int64_t rows, int64_t channels,
                        T* dz, GradSums* partials) {
  __shared__ GradSums slots[kRowWarps * kColumns];
  const int64_t c = int64_t(blockIdx.y) * kColumns + threadIdx.x % kWarpSize;
  GradSums s{0.f, 0.f};
  if (c < channels) {
    const BnBackwardCoef f = coef[c];
    const RowRange rr = thread_rows(rows);
    for (int64_t r = rr.begin; r < rr.end; r += rr.step) {
      const int64_t i = r * channels + c;
      const float xhat = k::normalized(static_cast<float>(z[i]), f.mean, f.invstd);
      const float d = k::bn_train_input_grad(static_cast<float>(g[i]), xhat, f.scale, f.mean_g, f.mean_g_xhat);
      dz[i] = static_cast<T>(d);
      k::bn_grad_sums_merge(s, GradSums{d, 0.f});
    }
  }
  s = column_allreduce<kColumns>(s, slots, merge_grad_sums);
  if (threadIdx.x < kColumns && c < channels) partials[int64_t(blockIdx.x) * channels + c] = s;
}

__global__ void __launch_bounds__(kThreads)
sum_partials_kernel(const GradSums* partials, int64_t partial_rows, int64_t channels, float* out) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += int64_t(gridDim.x) * blockDim.x) {
    GradSums s{0.f, 0.f};
    for (int64_t r = 0; r < partial_rows; ++r) k::bn_grad_sums_merge(s, partials[r * channels + c]);
    out[c] = s.sum_g;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
bn_param_grads_kernel(const BnBackwardCoef* coef, const float* raw_dot_w, const float* sum_dz, const T* conv_bias,
                      bool training, int64_t channels, float* dgamma, float* dbeta, float* dbias) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += int64_t(gridDim.x) * blockDim.x) {
    const BnBackwardCoef f = coef[c];
    dbeta[c] = f.sum_g;
    if (training) {
      dgamma[c] = f.sum_g_xhat;
      dbias[c] = sum_dz[c];
    } else {
      const float b = conv_bias != nullptr ? static_cast<float>(conv_bias[c]) : 0.f;
      dgamma[c] = k::bn_fold_gamma_grad(raw_dot_w[c], f.sum_g, b, f.mean, f.invstd);
      dbias[c] = f.sum_g * f.scale;
    }
  }
}

template <typename R>
__global__ void __launch_bounds__(kThreads)
update_running_stats_kernel(R* running_mean, R* running_var, const double* batch_mean, const double* batch_var,
                            int64_t channels, int64_t count, double momentum, const int64_t* num_batches_tracked) {
  const double factor = num_batches_tracked != nullptr ? 1.0 / double(*num_batches_tracked) : momentum;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += int64_t(gridDim.x) * blockDim.x) {
    double m = static_cast<double>(running_mean[c]), v = static_cast<double>(running_var[c]);
    k::running_stat_update(m, v, batch_mean[c], batch_var[c], double(count), factor);
    running_mean[c] = static_cast<R>(m);
    running_var[c] = static_cast<R>(v);
  }
}

bool vec4_ok(int64_t channels, const void* a, const void* b, const void* c, ElementType dtype) {
  const uintptr_t bytes = 4 * (dtype == ElementType::kFloat32 ? 4 : 2);
  auto aligned = [&](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0; };
  return channels % 4 == 0 && aligned(a) && aligned(b) && aligned(c);
}

dim3 reduction_grid(int64_t rows, int64_t channels) {
  return dim3(unsigned(row_chunks(rows)), unsigned((channels + kColumns - 1) / kColumns));
}

}  // namespace

void launch_channel_affine(const void* gamma, const void* beta, const void* running_mean,
                           const void* running_var, const void* conv_bias, double eps,
                           int64_t channels, ElementType dtype, Affine* affine, cudaStream_t stream) {
  dispatch_element_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    channel_affine_kernel<T><<<grid_stride_blocks(channels, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(gamma), static_cast<const T*>(beta), static_cast<const T*>(running_mean),
        static_cast<const T*>(running_var), static_cast<const T*>(conv_bias), float(eps), channels, affine);
  });
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_pack_weight(const void* weight, const k::ConvGeometry& g, ElementType dtype, float* packed,
                        cudaStream_t stream) {
  const int64_t total = g.out_c * g.in_c_per_group * g.kernel * g.kernel;
  dispatch_element_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    pack_weight_kernel<T><<<grid_stride_blocks(total, kThreads), kThreads, 0, stream>>>(static_cast<const T*>(weight), g,
                                                                                    packed);
  });
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_moments_partials(const void* z, int64_t rows, int64_t channels, ElementType dtype, Moments* partials,
                             cudaStream_t stream) {
  dispatch_element_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    moments_partials_kernel<T><<<reduction_grid(rows, channels), kThreads, 0, stream>>>(static_cast<const T*>(z), rows,
                                                                                     channels, partials);
  });
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_finalize_moments(const Moments* partials, int64_t partial_rows, int64_t channels, const void* gamma,
                             const void* beta, double eps, ElementType dtype, float* mean, float* var, Affine* affine,
                             cudaStream_t stream) {
  const unsigned blocks = unsigned((channels + kColumns - 1) / kColumns);
  dispatch_element_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    finalize_moments_kernel<T><<<blocks, kThreads, 0, stream>>>(partials, partial_rows, channels,
                                                                static_cast<const T*>(gamma),
                                                                static_cast<const T*>(beta), float(eps), mean, var,
                                                                affine);
  });
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_apply_epilogue(const void* z, const Affine* affine, const void* residual, bool relu, int64_t rows,
                           int64_t channels, ElementType dtype, void* y, cudaStream_t stream) {
  const bool vec4 = vec4_ok(channels, z, residual, y, dtype);
  const int64_t work = vec4 ? rows * channels / 4 : rows * channels;
  dispatch_element_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    apply_epilogue_kernel<T><<<grid_stride_blocks(work, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(z), affine, static_cast<const T*>(residual), relu, rows, channels, vec4,
        static_cast<T*>(y));
  });
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_grad_partials(const void* dy, const void* y, const void* z, const float* mean, const float* var,
                          double eps, bool relu, int64_t rows, int64_t channels, ElementType dtype, void* g,
                          GradSums* partials, cudaStream_t stream) {
  dispatch_element_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    grad_partials_kernel<T><<<reduction_grid(rows, channels), kThreads, 0, stream>>>(
        static_cast<const T*>(dy), static_cast<const T*>(y), static_cast<const T*>(z), mean, var, float(eps), relu,
        rows, channels, static_cast<T*>(g), partials);
  });
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_finalize_grad(const GradSums* partials, int64_t partial_rows, int64_t channels, int64_t rows,
                          const float* mean, const float* var, const void* gamma, double eps, ElementType dtype,
                          BnBackwardCoef* coef, cudaStream_t stream) {
  const unsigned blocks = unsigned((channels + kColumns - 1) / kColumns);
  dispatch_element_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    finalize_grad_kernel<T><<<blocks, kThreads, 0, stream>>>(partials, partial_rows, channels, rows, mean, var,
                                                            static_cast<const T*>(gamma), float(eps), coef);
  });
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_train_input_grad(const void* g, const void* z, const BnBackwardCoef* coef, int64_t rows, int64_t channels,
                             ElementType dtype, void* dz, GradSums* partials, cudaStream_t stream) {
  dispatch_element_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    train_input_grad_kernel<T><<<reduction_grid(rows, channels), kThreads, 0, stream>>>(
        static_cast<const T*>(g), static_cast<const T*>(z), coef, rows, channels, static_cast<T*>(dz), partials);
  });
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_sum_partials(const GradSums* partials, int64_t partial_rows, int64_t channels, float* out,
                         cudaStream_t stream) {
  sum_partials_kernel<<<grid_stride_blocks(channels, kThreads), kThreads, 0, stream>>>(partials, partial_rows,
                                                                                      channels, out);
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_bn_param_grads(const BnBackwardCoef* coef, const float* raw_dot_w, const float* sum_dz,
                           const void* conv_bias, bool training, int64_t channels, ElementType dtype, float* dgamma,
                           float* dbeta, float* dbias, cudaStream_t stream) {
  dispatch_element_type(dtype, [&](auto tag) {
    using T = decltype(tag);
    bn_param_grads_kernel<T><<<grid_stride_blocks(channels, kThreads), kThreads, 0, stream>>>(
        coef, raw_dot_w, sum_dz, static_cast<const T*>(conv_bias), training, channels, dgamma, dbeta, dbias);
  });
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_update_running_stats(void* running_mean, void* running_var, int running_dtype, const double* batch_mean,
                                 const double* batch_var, int64_t channels, int64_t count, double momentum,
                                 const int64_t* num_batches_tracked, cudaStream_t stream) {
  const unsigned blocks = grid_stride_blocks(channels, kThreads);
  auto launch = [&](auto tag) {
    using R = decltype(tag);
    update_running_stats_kernel<R><<<blocks, kThreads, 0, stream>>>(static_cast<R*>(running_mean),
                                                                    static_cast<R*>(running_var), batch_mean,
                                                                    batch_var, channels, count, momentum,
                                                                    num_batches_tracked);
  };
  switch (running_dtype) {
    case 0: launch(float{}); break;
    case 1: launch(c10::Half{}); break;
    case 2: launch(c10::BFloat16{}); break;
    default: launch(double{}); break;
  }
  REGNET_CUDA_CHECK_LAUNCH();
}

}  // namespace regnet_ext::cuda
