// Weight gradient of a grouped KxK conv with wide groups (wide_group_shape: a multiple of 16
// channels per group, 32 and more), float32, channels_last, AVX-512:
// raw[co][ci][kh][kw] = sum over output pixels p of dz[p, co] * x[p's input pixel at tap (kh, kw), ci].
//
// Why: for RegNetY-4.0GF's groups of 64 the alternatives were slow at small activations: the
// autotuner's timings of the whole backward (2-core Ice Lake VM, 2026-12-06, batch 1, 1088
// channels at 7px) were 2.7 ms for oneDNN's (both gradients, 45 GFLOP/s) and 5.3 ms for oneDNN's
// input gradient with the generic tiles' weight gradient (conv_weight_grad in
// conv_bn_act_backward.cpp, one broadcast per multiply-add). The backward for the weight alone
// (x not requiring grad; the BN passes included), interleaved (same VM, same day), oneDNN's time
// over these tiles': 1088 channels at 7px 2.49x (batch 1) and 1.51x (batch 8), at 14px stride
// 2 2.93x; 512 at 14px 2.11x, at 28px stride 2 2.50x; 192 at 28px 1.69x, at 56px stride 2 batch
// 8 1.94x; 128 at 56px batch 8 1.17x (78-149 GFLOP/s).
//
// Per group and tap this is the 1x1 weight gradient's GEMM (gemm_1x1_weight_grad.h) over the
// tap's input pixels: tiles of MR output channels x NV vectors of the group's input channels,
// per pixel NV loads of x and MR broadcasts of dz; a tap's pixels in the padding are skipped.
// Output pixels go in chunks of whole output rows, about kChunkPixels, so that a chunk's input
// rows stay in L2 while every (group, tap, block, tile) item passes over them. Threads take equal
// contiguous runs of items and each item sums its pixels in order: the result does not depend on
// the thread count. On the last chunk a tile scatters its sums into the weight's layout
// ([co][ci][tap]: its vectors run over ci, K*K floats apart); before that it keeps them in a
// buffer, [co][tap][ci]. (A separate transposing pass over the buffer took a quarter of the time
// at 1088 channels, 7px, batch 1.)
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/gemm_1x1_tiles.h"
#include "cpu/gemm_1x1_weight_grad.h"
#include "cpu/grouped_conv_wide.h"
#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

#if defined(__AVX512F__)
namespace wide_weight_grad {

using gemm_tiles::kLanes;
constexpr int64_t kChunkPixels = 512;

// What every item of one call reads and writes.
struct Problem {
  const kernels::ConvGeometry& g;
  const float* x;   // NHWC input
  const float* dz;  // NHWC output gradient
  float* sums;      // [co][tap][ci within the group], between chunks
  float* raw;       // [co][ci within the group][tap], the result
};

// Item (group, tap, co0 .. co0+MR-1, ci0 .. ci0+16 NV) over output rows [row0, row1) of N*H_out:
// adds to its sums (from zero on the first chunk), which go to raw on the last.
template <int MR, int NV>
inline void tile(const Problem& pb, int64_t group, int64_t tap, int64_t co0, int64_t ci0, int64_t row0, int64_t row1,
                 bool first, bool last) {
  const kernels::ConvGeometry& g = pb.g;
  const int64_t cpg = g.out_c_per_group, cig = g.in_c_per_group;
  const int64_t kh = tap / g.kernel, kw = tap % g.kernel, s = g.stride;
  // Output columns whose input column wo * s - padding + kw lies inside the image.
  const int64_t wo_lo = std::max<int64_t>(0, (g.padding - kw + s - 1) / s);
  const int64_t wo_hi = std::min<int64_t>(g.out_w, (g.in_w - 1 + g.padding - kw) / s + 1);
  const int64_t taps = g.kernel * g.kernel, pitch = taps * cig;  // between output channels
  float* out = pb.sums ? pb.sums + ((group * cpg + co0) * taps + tap) * cig + ci0 : nullptr;  // single chunk: none
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(out + r * pitch + v * kLanes);
  if (wo_lo < wo_hi) {
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t n = row / g.out_h, ho = row % g.out_h, hi = ho * s - g.padding + kh;
      if (hi < 0 || hi >= g.in_h) continue;
      const float* xp = pb.x + ((n * g.in_h + hi) * g.in_w + wo_lo * s - g.padding + kw) * g.in_c + group * cig + ci0;
      const float* dzp = pb.dz + (row * g.out_w + wo_lo) * g.out_c + group * cpg + co0;
      gemm_weight_grad::accumulate<MR, NV>(acc, dzp, g.out_c, xp, s * g.in_c, wo_hi - wo_lo, __mmask16(0xFFFF));
    }
  }
  if (!last) {
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + r * pitch + v * kLanes, acc[r][v]);
    return;
  }
  const __m512i apart = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32(static_cast<int>(taps)));
  float* dst = pb.raw + ((group * cpg + co0) * cig + ci0) * taps + tap;
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_i32scatter_ps(dst + (r * cig + v * kLanes) * taps, apart, acc[r][v], 4);
}

}  // namespace wide_weight_grad
#endif

// raw [C_out, G, K, K] (contiguous float) = the weight gradient above, for NHWC x and dz of a
// conv wide_group_shape(g) holds for.
inline void grouped_conv_wide_weight_grad(const kernels::ConvGeometry& g, const float* x, const float* dz, float* raw) {
  TORCH_INTERNAL_ASSERT(wide_group_shape(g), "grouped_conv_wide_weight_grad: ", g.in_c_per_group, " channels per group");
#if defined(__AVX512F__)
  using namespace wide_weight_grad;
  const int64_t cpg = g.out_c_per_group, cig = g.in_c_per_group, taps = g.kernel * g.kernel;
  const int64_t vectors = cig / kLanes, blocks = (vectors + gemm_tiles::kBlockVectors - 1) / gemm_tiles::kBlockVectors;
  // Items of one (group, tap): per block of input-channel vectors, its tiles of output channels.
  std::vector<int64_t> first_item(blocks + 1, 0);
  for (int64_t b = 0; b < blocks; ++b) {
    const int mr = gemm_weight_grad::tile_rows(gemm_tiles::block_of(b, vectors).second);
    first_item[b + 1] = first_item[b] + (cpg + mr - 1) / mr;
  }
  const int64_t per_tap = first_item[blocks], items = g.groups * taps * per_tap;
  const int64_t rows = g.batch * g.out_h, chunk_rows = std::max<int64_t>(1, kChunkPixels / g.out_w);
  // Only where there are several chunks; every item stores its sums on the first: no zeroing.
  const std::unique_ptr<float[]> sums(rows > chunk_rows ? new float[g.out_c * taps * cig] : nullptr);
  const Problem pb{g, x, dz, sums.get(), raw};
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t row0 = 0; row0 < rows; row0 += chunk_rows) {
      const int64_t row1 = std::min(rows, row0 + chunk_rows);
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t group_tap = item / per_tap, within = item % per_tap;
        const int64_t b = std::upper_bound(first_item.begin(), first_item.end(), within) - first_item.begin() - 1;
        const auto [v0, nv] = gemm_tiles::block_of(b, vectors);
        gemm_tiles::with_block_vectors(nv, [&](auto nv_constant) {
          constexpr int NV = decltype(nv_constant)::value;
          constexpr int MR = gemm_weight_grad::tile_rows(NV);
          const int64_t co0 = (within - first_item[b]) * MR;
          // 1 <= rows <= MR: the last tile of a group's channels may be shorter.
          gemm_tiles::with_remainder_rows<MR + 1>(std::min<int64_t>(MR, cpg - co0), [&](auto mr_constant) {
            tile<decltype(mr_constant)::value, NV>(pb, group_tap / taps, group_tap % taps, co0, v0 * kLanes, row0, row1,
                                                   row0 == 0, row1 == rows);
          });
        });
      }
    }
  });
#else
  (void)g, (void)x, (void)dz, (void)raw;
  TORCH_CHECK(false, "grouped_conv_wide_weight_grad: this build has no AVX-512 kernel");
#endif
}

}  // namespace regnet_ext::cpu
