// The schedule of the grouped 3x3 NHWC conv kernel (grouped_conv3x3.cu), written as REGNET_HD
// phase functions: which block owns which tile, which thread owns which pixels and channels, the
// shared-memory staging of one chunk of input channels, the register-tile accumulation and the
// per-thread epilogue. The kernel runs the phases with __syncthreads() between them; the CPU
// replay in tests/test_reduction_schedules.py runs the same phases thread by thread (barriers as
// loop boundaries) and checks the result against PyTorch's conv. No CUDA headers here.
#pragma once

#include "cuda/reduction_schedule.h"
#include "kernels/bn_stats.h"
#include "kernels/conv_bn_act.h"
#include "kernels/squeeze_excite.h"

namespace regnet_ext::cuda {

// Tile of one block: 8 x 8 output pixels x 32 output channels, 128 threads; each thread holds a
// register block of 4 pixels x 4 channels. Input channels are staged 8 at a time.
inline constexpr int kConvTileH = 8;
inline constexpr int kConvTileW = 8;
inline constexpr int kConvTileC = 32;
inline constexpr int kConvChunk = 8;
inline constexpr int kConvThreads = 128;
inline constexpr int kConvMaxSlots = 4;  // groups one 32-channel tile can touch when C/groups % 8 == 0
inline constexpr int kConvColumns = kConvTileC / 4;                                  // channel-threads: 8
inline constexpr int kConvPixelThreads = kConvThreads / kConvColumns;                // pixel-threads: 16
inline constexpr int kConvPixelsPerThread = kConvTileH * kConvTileW / kConvPixelThreads;  // 4
// One staged pixel holds kConvMaxSlots x 8 channels; the +1 word staggers pixels across banks.
inline constexpr int kConvPixelWords = kConvMaxSlots * kConvChunk + 1;
inline constexpr int kConvWeightWords = 9 * kConvChunk * kConvTileC;  // [tap][k][co_local]

template <int kStride>
struct ConvHalo {
  static constexpr int h = (kConvTileH - 1) * kStride + 3;
  static constexpr int w = (kConvTileW - 1) * kStride + 3;
  static constexpr int words = h * w * kConvPixelWords;
};

struct GroupedConv3x3Params {
  kernels::ConvGeometry geom;                   // kernel 3, stride 1 or 2, NHWC
  const void* x;                                // [N, H, W, C_in], element type T
  const float* packed_weight;                   // conv_pack_index layout, float
  const kernels::ChannelAffine<float>* affine;  // per output channel; nullptr = identity
  const void* residual;                         // [N, Ho, Wo, C_out] or nullptr
  void* y;                                      // [N, Ho, Wo, C_out]
  float* se_pool_sum;                           // [N, C_out] += sum over pixels of y, or nullptr
  kernels::MomentStats<float>* stat_partials;   // [N * tiles, C_out] moments of y, or nullptr
  bool relu;
};

// What one block computes: sample n, output pixels from (oy0, ox0), output channels from c0,
// which span `slots` groups starting at first_group.
struct ConvTile {
  int n, oy0, ox0, c0, first_group, slots;
};

REGNET_HD ConvTile conv_tile_of_block(const kernels::ConvGeometry& g, int bx, int by, int bz) {
  const int tiles_w = int((g.out_w + kConvTileW - 1) / kConvTileW);
  const int cog = int(g.out_c_per_group);
  const int c0 = by * kConvTileC;
  const int last = (c0 + kConvTileC < int(g.out_c) ? c0 + kConvTileC : int(g.out_c)) - 1;
  return ConvTile{bz, (bx / tiles_w) * kConvTileH, (bx % tiles_w) * kConvTileW, c0, c0 / cog, last / cog - c0 / cog + 1};
}

// What one thread computes: channels co..co+3 (column ct) of the pixels conv_pixel(pt, j).
struct ConvThread {
  int ct, pt, co, slot;
  bool channel_ok;
};

REGNET_HD ConvThread conv_thread(const kernels::ConvGeometry& g, const ConvTile& t, int tid) {
  const int ct = tid % kConvColumns, pt = tid / kConvColumns, co = t.c0 + 4 * ct;
  const bool ok = co < int(g.out_c);
  return ConvThread{ct, pt, co, ok ? co / int(g.out_c_per_group) - t.first_group : 0, ok};
}

REGNET_HD int conv_pixel_row(int pt, int j) { return pt / kConvTileW + j * (kConvPixelThreads / kConvTileW); }
REGNET_HD int conv_pixel_col(int pt) { return pt % kConvTileW; }

// Phase 1a: stage input channels [k0, k0 + 8) of every group the tile touches, with the halo, as
// float (zeros outside the image). `load8(src, out)` reads 8 consecutive elements.
template <int kStride, typename T, typename Load8>
REGNET_HD void conv_stage_input(const kernels::ConvGeometry& g, const T* x_n, const ConvTile& t, int k0, int tid,
                                float* in_s, Load8 load8) {
  const int H = int(g.in_h), W = int(g.in_w), C = int(g.in_c), cig = int(g.in_c_per_group);
  for (int i = tid; i < ConvHalo<kStride>::h * ConvHalo<kStride>::w * t.slots; i += kConvThreads) {
    const int pix = i / t.slots, s = i % t.slots;
    const int iy = t.oy0 * kStride - int(g.padding) + pix / ConvHalo<kStride>::w;
    const int ix = t.ox0 * kStride - int(g.padding) + pix % ConvHalo<kStride>::w;
    float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (iy >= 0 && iy < H && ix >= 0 && ix < W) load8(x_n + (int64_t(iy) * W + ix) * C + (t.first_group + s) * cig + k0, v);
    for (int e = 0; e < 8; ++e) in_s[pix * kConvPixelWords + s * kConvChunk + e] = v[e];
  }
}

// Phase 1b: stage the weights of the tile's 32 output channels for input channels [k0, k0 + 8).
REGNET_HD void conv_stage_weights(const kernels::ConvGeometry& g, const float* packed, const ConvTile& t, int k0,
                                  int tid, float* w_s) {
  for (int i = tid; i < kConvWeightWords; i += kConvThreads) {
    const int co_local = i % kConvTileC, k = (i / kConvTileC) % kConvChunk, tap = i / (kConvTileC * kConvChunk);
    const int c = t.c0 + co_local;
    w_s[i] = c < int(g.out_c) ? packed[kernels::conv_pack_index(g, c, k0 + k, tap / 3, tap % 3)] : 0.f;
  }
}

// Phase 2: accumulate the staged chunk into the thread's 4 pixels x 4 channels.
template <int kStride>
REGNET_HD void conv_accumulate_chunk(const ConvThread& th, const float* in_s, const float* w_s,
                                     float (&acc)[kConvPixelsPerThread][4]) {
REGNET_UNROLL
  for (int tap = 0; tap < 9; ++tap) {
    const int ky = tap / 3, kx = tap % 3;
REGNET_UNROLL
    for (int k = 0; k < kConvChunk; ++k) {
      const float* wp = &w_s[(tap * kConvChunk + k) * kConvTileC + 4 * th.ct];
#ifdef __CUDA_ARCH__
      const float4 w4 = *reinterpret_cast<const float4*>(wp);  // one 16-byte shared load
      const float w[4] = {w4.x, w4.y, w4.z, w4.w};
#else
      const float w[4] = {wp[0], wp[1], wp[2], wp[3]};
#endif
REGNET_UNROLL
      for (int j = 0; j < kConvPixelsPerThread; ++j) {
        const int r = conv_pixel_row(th.pt, j), c = conv_pixel_col(th.pt);
        const float xv = in_s[((r * kStride + ky) * ConvHalo<kStride>::w + c * kStride + kx) * kConvPixelWords +
                              th.slot * kConvChunk + k];
REGNET_UNROLL
        for (int cc = 0; cc < 4; ++cc) acc[j][cc] += xv * w[cc];
      }
    }
  }
}

struct Column4Sums {
  float v[4];
};
struct Column4Moments {
  kernels::MomentStats<float> m[4];
};

REGNET_HD Column4Sums add_column_sums(Column4Sums a, const Column4Sums& b) {
  for (int cc = 0; cc < 4; ++cc) a.v[cc] = kernels::se_pool_step(a.v[cc], b.v[cc]);
  return a;
}

REGNET_HD Column4Moments merge_column_moments(Column4Moments a, const Column4Moments& b) {
  for (int cc = 0; cc < 4; ++cc) kernels::chan_merge(a.m[cc], b.m[cc]);
  return a;
}

// Phase 3: the shared epilogue on the thread's outputs, stored through store4(dst, v[4]);
// residual read through load4(src, v[4]); pool sums and Welford moments of y gathered per thread.
template <typename T, typename Load4, typename Store4>
REGNET_HD void conv_thread_epilogue(const GroupedConv3x3Params& p, const ConvTile& t, const ConvThread& th,
                                    const float (&acc)[kConvPixelsPerThread][4], Column4Sums& pool,
                                    Column4Moments& moments, Load4 load4, Store4 store4) {
  const kernels::ConvGeometry& g = p.geom;
  kernels::ChannelAffine<float> affine[4];
  for (int cc = 0; cc < 4; ++cc) {
    affine[cc] = (p.affine != nullptr && th.channel_ok) ? p.affine[th.co + cc] : kernels::ChannelAffine<float>{1.f, 0.f};
    pool.v[cc] = 0.f;
    moments.m[cc] = kernels::moment_stats_empty<float>();
  }
REGNET_UNROLL
  for (int j = 0; j < kConvPixelsPerThread; ++j) {
    const int oy = t.oy0 + conv_pixel_row(th.pt, j), ox = t.ox0 + conv_pixel_col(th.pt);
    if (!th.channel_ok || oy >= int(g.out_h) || ox >= int(g.out_w)) continue;
    const int64_t out = kernels::nhwc_index(t.n, oy, ox, th.co, g.out_h, g.out_w, g.out_c);
    float res[4] = {0.f, 0.f, 0.f, 0.f};
    if (p.residual != nullptr) load4(static_cast<const T*>(p.residual) + out, res);
    float v[4];
    for (int cc = 0; cc < 4; ++cc) {
      v[cc] = kernels::conv_epilogue(acc[j][cc], affine[cc], res[cc], p.relu);
      if (p.se_pool_sum != nullptr) pool.v[cc] = kernels::se_pool_step(pool.v[cc], v[cc]);
      if (p.stat_partials != nullptr) kernels::welford_push(moments.m[cc], v[cc]);
    }
    store4(static_cast<T*>(p.y) + out, v);
  }
}

// Phase 4 (thread `column` of warp 0, after column_allreduce): the block's per-channel results.
template <typename AtomicAdd>
REGNET_HD void conv_write_pool(const GroupedConv3x3Params& p, const ConvTile& t, const ConvThread& th,
                               const Column4Sums& pool, AtomicAdd atomic_add) {
  if (!th.channel_ok) return;
  for (int cc = 0; cc < 4; ++cc) atomic_add(p.se_pool_sum + int64_t(t.n) * p.geom.out_c + th.co + cc, pool.v[cc]);
}

REGNET_HD void conv_write_moments(const GroupedConv3x3Params& p, const ConvTile& t, const ConvThread& th,
                                  const Column4Moments& moments, int tiles_per_image, int tile) {
  if (!th.channel_ok) return;
  const int64_t row = int64_t(t.n) * tiles_per_image + tile;
  for (int cc = 0; cc < 4; ++cc) p.stat_partials[row * p.geom.out_c + th.co + cc] = moments.m[cc];
}

}  // namespace regnet_ext::cuda
