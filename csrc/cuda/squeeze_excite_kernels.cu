// CUDA kernels of squeeze_excite. Each pass calls the shared formulas of kernels/squeeze_excite.h;
// only the thread mapping and the reductions (reductions.cuh) are GPU-specific.
//
// Forward: pool (x read once) -> excite (one block per sample: mean, hidden units, gates) -> scale
// (x read again, y written). Backward: pool + dg in one read of x and dy -> excite backward (one
// block per sample) -> dx = dy * g + ds / P. The weight gradients of the two tiny linear layers
// are GEMMs over the batch and are left to cuBLAS by the host code (squeeze_excite_cuda.cpp).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/device_utils.cuh"
#include "cuda/reductions.cuh"
#include "cuda/squeeze_excite_kernels.h"
#include "kernels/squeeze_excite.h"

namespace regnet_ext::cuda {
namespace k = regnet_ext::kernels;
namespace {

constexpr int kPoolThreads = 256;  // channels_last: 32 channels x 8 pixel rows
constexpr int kPoolColumns = 32;
constexpr int kPoolChunkPixels = 256;
constexpr int kMlpThreads = 256;
constexpr int kElementwiseThreads = 256;

struct PoolAndGateGrad {
  float pool, dgate;
};

__device__ __forceinline__ PoolAndGateGrad add_pair(PoolAndGateGrad a, const PoolAndGateGrad& b) {
  return {k::se_pool_step(a.pool, b.pool), k::se_pool_step(a.dgate, b.dgate)};
}

// One pixel's contribution; the dgate half is skipped (and stays 0) without dy.
template <typename T, bool kWithGrad>
__device__ __forceinline__ void pool_push(PoolAndGateGrad& acc, const T* x, const T* dy, int64_t i) {
  const float xv = static_cast<float>(x[i]);
  acc.pool = k::se_pool_step(acc.pool, xv);
  if constexpr (kWithGrad) acc.dgate = k::se_gate_grad_step(acc.dgate, static_cast<float>(dy[i]), xv);
}

// channels_last: block (chunk, 32-channel tile, sample); lanes are channels, warps pixel rows.
template <typename T, bool kWithGrad>
__global__ void __launch_bounds__(kPoolThreads)
se_pool_nhwc_kernel(const T* x, const T* dy, SeShapeCuda s, int64_t chunks, float* pool_partial,
                    float* dgate_partial) {
  __shared__ PoolAndGateGrad slots[kPoolThreads / kWarpSize * kPoolColumns];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t c = int64_t(blockIdx.y) * kPoolColumns + lane, n = blockIdx.z, chunk = blockIdx.x;
  const int64_t p_begin = chunk * kPoolChunkPixels, p_end = min(s.pixels, p_begin + kPoolChunkPixels);
  PoolAndGateGrad acc{0.f, 0.f};
  if (c < s.channels)
    for (int64_t p = p_begin + warp; p < p_end; p += kPoolThreads / kWarpSize)
      pool_push<T, kWithGrad>(acc, x, dy, (n * s.pixels + p) * s.channels + c);
  acc = column_allreduce<kPoolColumns>(acc, slots, add_pair);
  if (warp == 0 && c < s.channels) {
    const int64_t row = n * chunks + chunk;
    pool_partial[row * s.channels + c] = acc.pool;
    if constexpr (kWithGrad) dgate_partial[row * s.channels + c] = acc.dgate;
  }
}

// NCHW: one block per (sample, channel) plane.
template <typename T, bool kWithGrad>
__global__ void __launch_bounds__(kPoolThreads)
se_pool_nchw_kernel(const T* x, const T* dy, SeShapeCuda s, float* pool_partial, float* dgate_partial) {
  __shared__ PoolAndGateGrad slots[kWarpSize];
  const int64_t plane = blockIdx.x;
  PoolAndGateGrad acc{0.f, 0.f};
  for (int64_t p = threadIdx.x; p < s.pixels; p += kPoolThreads)
    pool_push<T, kWithGrad>(acc, x, dy, plane * s.pixels + p);
  acc = block_allreduce(acc, PoolAndGateGrad{0.f, 0.f}, slots, add_pair);
  if (threadIdx.x == 0) {
    pool_partial[plane] = acc.pool;
    if constexpr (kWithGrad) dgate_partial[plane] = acc.dgate;
  }
}

// Dot product of one warp: lanes take interleaved elements (coalesced), then a butterfly sum.
// It has the contract of kernels::SeScalarDot, so se_hidden_unit / se_gate_unit take it as is.
struct WarpDot {
  __device__ float operator()(const float* a, const float* b, int64_t n) const {
    float acc = 0.f;
    for (int64_t i = threadIdx.x % kWarpSize; i < n; i += kWarpSize) acc += a[i] * b[i];
    return warp_allreduce<1>(acc, [](float u, float v) { return u + v; });
  }
};

// mean_s[c] = sum of the sample's partial rows / P (one thread per channel).
__device__ void merge_partials(const float* partial, int64_t chunks, int64_t n, int64_t channels,
                               float scale, float* out_s, float* out) {
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    float acc = 0.f;
    for (int64_t kk = 0; kk < chunks; ++kk) acc = k::se_pool_step(acc, partial[(n * chunks + kk) * channels + c]);
    out_s[c] = acc * scale;
    if (out != nullptr) out[n * channels + c] = acc * scale;
  }
}

// Hidden units, one warp per unit: z_s[j] = relu(W1[j] . mean + b1[j]).
__device__ void hidden_units(const float* w1, const float* b1, const float* mean_s, const SeShapeCuda& s,
                             int64_t n, float* z_s, float* z) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  for (int64_t j = warp; j < s.hidden; j += warps) {
    const float v = k::se_hidden_unit(w1 + j * s.channels, b1[j], mean_s, s.channels, WarpDot{});
    if (lane == 0) {
      z_s[j] = v;
      z[n * s.hidden + j] = v;
    }
  }
}

__global__ void __launch_bounds__(kMlpThreads)
se_excite_kernel(const float* partial, int64_t chunks, const float* w1, const float* b1, const float* w2,
                 const float* b2, SeShapeCuda s, float* mean, float* z, float* gate) {
  extern __shared__ float mlp_s[];
  float* mean_s = mlp_s;             // [C]
  float* z_s = mlp_s + s.channels;   // [C_se]
  const int64_t n = blockIdx.x;
  merge_partials(partial, chunks, n, s.channels, 1.f / float(s.pixels), mean_s, mean);
  __syncthreads();
  hidden_units(w1, b1, mean_s, s, n, z_s, z);
  __syncthreads();
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  for (int64_t c = warp; c < s.channels; c += warps) {
    const float g = k::se_gate_unit(w2 + c * s.hidden, b2[c], z_s, s.hidden, WarpDot{});
    if (lane == 0) gate[n * s.channels + c] = g;
  }
}

__global__ void __launch_bounds__(kMlpThreads)
se_excite_backward_kernel(const float* pool_partial, const float* dgate_partial, int64_t chunks,
                          const float* w1, const float* b1, const float* w2, const float* b2,
                          SeShapeCuda s, float* mean, float* z, float* dpre2, float* dz,
                          float* ds_mean, float* gate) {
  extern __shared__ float mlp_s[];
  float* mean_s = mlp_s;                           // [C]
  float* dpre2_s = mean_s + s.channels;            // [C]: dg, then d pre-sigmoid
  float* z_s = dpre2_s + s.channels;               // [C_se]
  float* dz_s = z_s + s.hidden;                    // [C_se]
  const int64_t n = blockIdx.x;
  const float inv_pixels = 1.f / float(s.pixels);
  merge_partials(pool_partial, chunks, n, s.channels, inv_pixels, mean_s, mean);
  merge_partials(dgate_partial, chunks, n, s.channels, 1.f, dpre2_s, nullptr);
  __syncthreads();
  hidden_units(w1, b1, mean_s, s, n, z_s, z);
  __syncthreads();
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  for (int64_t c = warp; c < s.channels; c += warps) {
    const float g = k::se_gate_unit(w2 + c * s.hidden, b2[c], z_s, s.hidden, WarpDot{});
    const float d = k::se_sigmoid_grad(dpre2_s[c], g);
    __syncwarp();  // every lane has read dg before lane 0 overwrites it
    if (lane == 0) {
      gate[n * s.channels + c] = g;
      dpre2_s[c] = d;
      dpre2[n * s.channels + c] = d;
    }
  }
  __syncthreads();
  // dz = (W2^T dpre2) masked by z > 0; thread j walks W2's column j (coalesced across threads),
  // summing over c in the same order as the shared se_excite_backward.
  for (int64_t j = threadIdx.x; j < s.hidden; j += blockDim.x) {
    float acc = 0.f;
    for (int64_t c = 0; c < s.channels; ++c) acc += w2[c * s.hidden + j] * dpre2_s[c];
    const float d = k::se_hidden_grad(acc, z_s[j]);
    dz_s[j] = d;
    dz[n * s.hidden + j] = d;
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < s.channels; c += blockDim.x) {
    float acc = 0.f;
    for (int64_t j = 0; j < s.hidden; ++j) acc += w1[j * s.channels + c] * dz_s[j];
    ds_mean[n * s.channels + c] = acc * inv_pixels;
  }
}

// Index of the per-(sample, channel) vectors for element i.
__device__ __forceinline__ int64_t se_vector_index(int64_t i, const SeShapeCuda& s) {
  return s.channels_last ? (i / (s.pixels * s.channels)) * s.channels + i % s.channels : i / s.pixels;
}

// y = x * g (kGrad false) or dx = dy * g + ds (kGrad true); 4 elements per step when `vec4`
// (the 4 share a gate row: C % 4 == 0 for channels_last, P % 4 == 0 for NCHW).
template <typename T, bool kGrad>
__global__ void __launch_bounds__(kElementwiseThreads)
se_elementwise_kernel(const T* in, const float* gate, const float* ds_mean, SeShapeCuda s, bool vec4, T* out) {
  const int64_t total = s.batch * s.channels * s.pixels;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  auto one = [&](float v, int64_t j) {
    return kGrad ? k::se_input_grad(v, gate[j], ds_mean[j]) : k::se_scale(v, gate[j]);
  };
  if (vec4) {
    for (int64_t q = first; q * 4 < total; q += stride) {
      float v[4];
      load4_as_float(in + q * 4, v);
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = one(v[e], se_vector_index(q * 4 + e, s));
      store4_from_float(out + q * 4, v);
    }
  } else {
    for (int64_t i = first; i < total; i += stride)
      out[i] = static_cast<T>(one(static_cast<float>(in[i]), se_vector_index(i, s)));
  }
}

unsigned elementwise_blocks(int64_t work) {
  const int64_t blocks = (work + kElementwiseThreads - 1) / kElementwiseThreads;
  return unsigned(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);  // grid-stride beyond
}

template <typename T, bool kWithGrad>
void launch_pool_typed(const void* x, const void* dy, const SeShapeCuda& s, float* pool_partial,
                       float* dgate_partial, cudaStream_t stream) {
  const T* xt = static_cast<const T*>(x);
  const T* dyt = static_cast<const T*>(dy);
  if (s.channels_last) {
    const dim3 grid(unsigned(se_pool_chunks(s)), unsigned((s.channels + kPoolColumns - 1) / kPoolColumns),
                    unsigned(s.batch));
    se_pool_nhwc_kernel<T, kWithGrad><<<grid, kPoolThreads, 0, stream>>>(xt, dyt, s, se_pool_chunks(s),
                                                                        pool_partial, dgate_partial);
  } else {
    se_pool_nchw_kernel<T, kWithGrad><<<unsigned(s.batch * s.channels), kPoolThreads, 0, stream>>>(
        xt, dyt, s, pool_partial, dgate_partial);
  }
  REGNET_CUDA_CHECK_LAUNCH();
}

template <bool kWithGrad>
void launch_pool(const void* x, const void* dy, const SeShapeCuda& s, ElementType dtype,
                 float* pool_partial, float* dgate_partial, cudaStream_t stream) {
  switch (dtype) {
    case ElementType::kFloat32:
      return launch_pool_typed<float, kWithGrad>(x, dy, s, pool_partial, dgate_partial, stream);
    case ElementType::kFloat16:
      return launch_pool_typed<c10::Half, kWithGrad>(x, dy, s, pool_partial, dgate_partial, stream);
    case ElementType::kBFloat16:
      return launch_pool_typed<c10::BFloat16, kWithGrad>(x, dy, s, pool_partial, dgate_partial, stream);
  }
}

template <bool kGrad>
void launch_elementwise(const void* in, const float* gate, const float* ds_mean, const SeShapeCuda& s,
                        ElementType dtype, void* out, cudaStream_t stream) {
  const int64_t total = s.batch * s.channels * s.pixels;
  const int64_t group = s.channels_last ? s.channels : s.pixels;
  const size_t elem = dtype == ElementType::kFloat32 ? 4 : 2;
  const bool vec4 = group % 4 == 0 && reinterpret_cast<uintptr_t>(in) % (4 * elem) == 0 &&
                    reinterpret_cast<uintptr_t>(out) % (4 * elem) == 0;
  const unsigned blocks = elementwise_blocks(vec4 ? total / 4 : total);
  switch (dtype) {
    case ElementType::kFloat32:
      se_elementwise_kernel<float, kGrad><<<blocks, kElementwiseThreads, 0, stream>>>(
          static_cast<const float*>(in), gate, ds_mean, s, vec4, static_cast<float*>(out));
      break;
    case ElementType::kFloat16:
      se_elementwise_kernel<c10::Half, kGrad><<<blocks, kElementwiseThreads, 0, stream>>>(
          static_cast<const c10::Half*>(in), gate, ds_mean, s, vec4, static_cast<c10::Half*>(out));
      break;
    case ElementType::kBFloat16:
      se_elementwise_kernel<c10::BFloat16, kGrad><<<blocks, kElementwiseThreads, 0, stream>>>(
          static_cast<const c10::BFloat16*>(in), gate, ds_mean, s, vec4, static_cast<c10::BFloat16*>(out));
      break;
  }
  REGNET_CUDA_CHECK_LAUNCH();
}

}  // namespace

int64_t se_pool_chunks(const SeShapeCuda& s) {
  return s.channels_last ? (s.pixels + kPoolChunkPixels - 1) / kPoolChunkPixels : 1;
}

void launch_se_pool(const void* x, const SeShapeCuda& s, ElementType dtype, float* partial,
                    cudaStream_t stream) {
  launch_pool<false>(x, nullptr, s, dtype, partial, nullptr, stream);
}

void launch_se_pool_and_gate_grad(const void* x, const void* dy, const SeShapeCuda& s,
                                  ElementType dtype, float* pool_partial, float* dgate_partial,
                                  cudaStream_t stream) {
  launch_pool<true>(x, dy, s, dtype, pool_partial, dgate_partial, stream);
}

void launch_se_excite(const float* partial, int64_t chunks, const float* w1, const float* b1,
                      const float* w2, const float* b2, const SeShapeCuda& s, float* mean, float* z,
                      float* gate, cudaStream_t stream) {
  const size_t smem = sizeof(float) * size_t(s.channels + s.hidden);
  se_excite_kernel<<<unsigned(s.batch), kMlpThreads, smem, stream>>>(partial, chunks, w1, b1, w2, b2, s,
                                                                     mean, z, gate);
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_se_excite_backward(const float* pool_partial, const float* dgate_partial,
                               int64_t chunks, const float* w1, const float* b1, const float* w2,
                               const float* b2, const SeShapeCuda& s, float* mean, float* z,
                               float* dpre2, float* dz, float* ds_mean, float* gate,
                               cudaStream_t stream) {
  const size_t smem = sizeof(float) * size_t(2 * s.channels + 2 * s.hidden);
  se_excite_backward_kernel<<<unsigned(s.batch), kMlpThreads, smem, stream>>>(
      pool_partial, dgate_partial, chunks, w1, b1, w2, b2, s, mean, z, dpre2, dz, ds_mean, gate);
  REGNET_CUDA_CHECK_LAUNCH();
}

void launch_se_scale(const void* x, const float* gate, const SeShapeCuda& s, ElementType dtype,
                     void* y, cudaStream_t stream) {
  launch_elementwise<false>(x, gate, nullptr, s, dtype, y, stream);
}

void launch_se_input_grad(const void* dy, const float* gate, const float* ds_mean,
                          const SeShapeCuda& s, ElementType dtype, void* dx, cudaStream_t stream) {
  launch_elementwise<true>(dy, gate, ds_mean, s, dtype, dx, stream);
}

}  // namespace regnet_ext::cuda
