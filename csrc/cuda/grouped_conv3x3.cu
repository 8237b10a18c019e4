// Grouped 3x3 conv, NHWC, with conv_bn_act's epilogue fused in: BN affine, residual, ReLU, and
// optionally the SE pooling sums (eval) or the per-tile BN moments (training).
//
// Why a hand-written kernel: cuDNN is weak at RegNet's small group widths (8..232 channels per
// group, rarely a power of two) in NHWC, and only a custom kernel can fuse the epilogue work.
// Schedule (phases in grouped_conv3x3_tile.h, replayed on the CPU by the tests): a block computes
// 8x8 output pixels x 32 output channels. The 32 channels may span several groups when
// C/groups < 32 (up to kConvMaxSlots of them), so narrow groups keep every thread busy. Input
// channels are staged 8 at a time (16-byte loads) into shared memory with the 3x3 halo, the
// weights of the same 8 input channels next to them; each thread accumulates a 4-pixel x
// 4-channel register block in float. This is a SIMT kernel: tensor cores (mma) would pay off for
// group widths >= 32 and are not used yet.
#include "cuda/device_utils.cuh"
#include "cuda/grouped_conv3x3.h"
#include "cuda/reductions.cuh"

namespace regnet_ext::cuda {
namespace {

constexpr int kMinBlocksPerSM = 4;  // register budget: 65536 / (128 * 4) = 128 per thread

static_assert(kConvThreads % kWarpSize == 0 && kWarpSize % kConvColumns == 0, "tile layout");
static_assert(sizeof(Column4Moments) * (kConvThreads / kWarpSize) * kConvColumns <= sizeof(float) * ConvHalo<1>::words,
              "the reduction slots fit in the input staging buffer");

struct Load8 {
  template <typename T>
  __device__ void operator()(const T* src, float (&out)[8]) const { load8_as_float(src, out); }
};
struct Load4 {
  template <typename T>
  __device__ void operator()(const T* src, float (&out)[4]) const { load4_as_float(src, out); }
};
struct Store4 {
  template <typename T>
  __device__ void operator()(T* dst, const float (&v)[4]) const { store4_from_float(dst, v); }
};

template <typename T, int kStride>
__global__ void __launch_bounds__(kConvThreads, kMinBlocksPerSM)
grouped_conv3x3_nhwc_kernel(GroupedConv3x3Params p) {
  __shared__ __align__(16) float in_s[ConvHalo<kStride>::words];
  __shared__ __align__(16) float w_s[kConvWeightWords];
  const kernels::ConvGeometry& g = p.geom;
  const ConvTile t = conv_tile_of_block(g, blockIdx.x, blockIdx.y, blockIdx.z);
  const ConvThread th = conv_thread(g, t, threadIdx.x);
  const T* x_n = static_cast<const T*>(p.x) + int64_t(t.n) * g.in_h * g.in_w * g.in_c;

  float acc[kConvPixelsPerThread][4] = {};
  for (int k0 = 0; k0 < int(g.in_c_per_group); k0 += kConvChunk) {
    __syncthreads();  // the previous chunk's reads are done
    conv_stage_input<kStride>(g, x_n, t, k0, threadIdx.x, in_s, Load8{});
    conv_stage_weights(g, p.packed_weight, t, k0, threadIdx.x, w_s);
    __syncthreads();
    conv_accumulate_chunk<kStride>(th, in_s, w_s, acc);
  }
  Column4Sums pool;
  Column4Moments moments;
  conv_thread_epilogue<T>(p, t, th, acc, pool, moments, Load4{}, Store4{});

  __syncthreads();  // in_s is reused for the reduction slots
  if (p.se_pool_sum != nullptr) {
    pool = column_allreduce<kConvColumns>(pool, reinterpret_cast<Column4Sums*>(in_s), add_column_sums);
    if (threadIdx.x < kConvColumns)
      conv_write_pool(p, t, th, pool, [](float* dst, float v) { atomicAdd(dst, v); });
    __syncthreads();
  }
  if (p.stat_partials != nullptr) {
    moments = column_allreduce<kConvColumns>(moments, reinterpret_cast<Column4Moments*>(in_s), merge_column_moments);
    if (threadIdx.x < kConvColumns) conv_write_moments(p, t, th, moments, gridDim.x, blockIdx.x);
  }
}

template <typename T>
void launch_typed(const GroupedConv3x3Params& p, cudaStream_t stream) {
  const auto& g = p.geom;
  const dim3 grid(unsigned(grouped_conv3x3_tiles_per_image(g)), unsigned((g.out_c + kConvTileC - 1) / kConvTileC),
                  unsigned(g.batch));
  if (g.stride == 1)
    grouped_conv3x3_nhwc_kernel<T, 1><<<grid, kConvThreads, 0, stream>>>(p);
  else
    grouped_conv3x3_nhwc_kernel<T, 2><<<grid, kConvThreads, 0, stream>>>(p);
  REGNET_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool grouped_conv3x3_supported(const kernels::ConvGeometry& g) {
  // 8-channel chunks must not straddle groups, which also bounds a 32-channel tile to <= 4 groups.
  return g.kernel == 3 && (g.stride == 1 || g.stride == 2) && g.in_c_per_group % kConvChunk == 0 &&
         g.out_c_per_group % kConvChunk == 0 && g.batch > 0 && g.batch <= 65535 && g.out_h > 0 && g.out_w > 0 &&
         g.in_h * g.in_w * g.in_c < (int64_t(1) << 31) && g.out_h * g.out_w * g.out_c < (int64_t(1) << 31);
}

int64_t grouped_conv3x3_tiles_per_image(const kernels::ConvGeometry& g) {
  return ((g.out_h + kConvTileH - 1) / kConvTileH) * ((g.out_w + kConvTileW - 1) / kConvTileW);
}

void launch_grouped_conv3x3(const GroupedConv3x3Params& p, ElementType dtype, cudaStream_t stream) {
  dispatch_element_type(dtype, [&](auto tag) { launch_typed<decltype(tag)>(p, stream); });
}

}  // namespace regnet_ext::cuda
