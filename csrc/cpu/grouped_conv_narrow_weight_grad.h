// Weight gradient of the 3x3 grouped conv (padding 1, stride 1 or 2) with 8 or 16 channels per
// group, float32, channels_last, AVX-512: raw[group][kh][kw][ci][co] = sum over pixels of
// x[n, ho * s - 1 + kh, wo * s - 1 + kw, ci] * dz[n, ho, wo, co] (conv_pack_index's layout).
//
// A block is 16 output channels, the forward tiles' (one group of 16, or two neighbouring groups
// of 8). For each block, kernel row kh and 8 input channels (8 per group: both groups' channel ci
// at once, through the forward tiles' lane permute), 24 accumulators (8 input channels x 3 kernel
// columns, 16 output-channel lanes each) stay in registers over a band of output rows; each input
// value is broadcast (or permuted) once and multiplies the dz vector of every output pixel that
// reads it, 3 at stride 1, 1 or 2 at stride 2. The generic tiles (conv_weight_grad_tile) make a
// broadcast per multiply-add and move their accumulators through memory every output row.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/chunk_stride.h"
#include "cpu/conv_bn_act_cpu.h"
#include "cpu/grouped_conv_narrow.h"
#include "kernels/conv_bn_act.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace regnet_ext::cpu {

// Whether grouped_conv_narrow_weight_grad computes this conv's weight gradient.
inline bool narrow_weight_grad_applies(const kernels::ConvGeometry& g) {
#if defined(__AVX512F__)
  return g.kernel == 3 && g.padding == 1 && (g.stride == 1 || g.stride == 2) && g.groups > 1 &&
         (g.in_c_per_group == 8 || g.in_c_per_group == 16) && g.out_c_per_group == g.in_c_per_group;
#else
  (void)g;
  return false;
#endif
}

#if defined(__AVX512F__)
namespace narrow_wgrad {

// 24 accumulators: i = kw * 8 + ci for 8 input channels x 3 kernel columns.
using Accumulators = narrow::SplitAccumulators<24>;

// Which of a column's three kernel columns have a pixel to feed (accumulate_row).
template <bool... kFlags>
struct Uses {
  static constexpr bool value[] = {kFlags...};
};

// One output row's terms for a block: xrow is input row ho * s - 1 + kh at the block's first
// channel (plus ci0 for 16 per group), dzrow output row ho at the block's first channel. kPairs:
// two groups of 8 a block (lane permutes of each pixel's 16 channels), else one group of 16
// (broadcasts of its input channels ci0 .. ci0 + 7).
template <int kStride, bool kPairs>
__attribute__((always_inline)) inline void accumulate_row(Accumulators& acc, const float* xrow, const float* dzrow,
                                                          int64_t in_w, int64_t out_w, int64_t in_c, int64_t out_c,
                                                          __mmask16 lanes, const __m512i (&idx)[8]) {
  // fma_column(Uses<...>{}, col, d0, d1, d2): input column col times the dz vectors of the pixels
  // reading it at kernel columns 0, 1 and 2, those whose flag is set (known when compiling).
  const auto fma_column = [&](auto uses, int64_t col, __m512 d0, __m512 d1, __m512 d2) {
    constexpr bool kUses[3] = {decltype(uses)::value[0], decltype(uses)::value[1], decltype(uses)::value[2]};
    const float* px = xrow + col * in_c;
    const __m512 xv = kPairs ? _mm512_maskz_loadu_ps(lanes, px) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int ci = 0; ci < 8; ++ci) {
      const __m512 v = kPairs ? _mm512_permutexvar_ps(idx[ci], xv) : _mm512_set1_ps(px[ci]);
      if constexpr (kUses[0]) acc(ci) = _mm512_fmadd_ps(v, d0, acc(ci));
      if constexpr (kUses[1]) acc(8 + ci) = _mm512_fmadd_ps(v, d1, acc(8 + ci));
      if constexpr (kUses[2]) acc(16 + ci) = _mm512_fmadd_ps(v, d2, acc(16 + ci));
    }
  };
  const auto dz_at = [&](int64_t wo) { return _mm512_maskz_loadu_ps(lanes, dzrow + wo * out_c); };
  const __m512 none = _mm512_setzero_ps();
  if constexpr (kStride == 1) {
    // Column j feeds pixels j + 1 (kw 0), j (kw 1) and j - 1 (kw 2); in_w == out_w.
    __m512 cur = dz_at(0);
    if (in_w == 1) {
      fma_column(Uses<false, true, false>{}, 0, none, cur, none);
      return;
    }
    __m512 next = dz_at(1);
    fma_column(Uses<true, true, false>{}, 0, next, cur, none);
    for (int64_t j = 1; j + 1 < in_w; ++j) {
      const __m512 prev = cur;
      cur = next;
      next = dz_at(j + 1);
      fma_column(Uses<true, true, true>{}, j, next, cur, prev);
    }
    fma_column(Uses<false, true, true>{}, in_w - 1, none, next, cur);
  } else {
    // Pixel wo reads columns 2wo - 1 (kw 0), 2wo (kw 1) and 2wo + 1 (kw 2); column 2wo + 1 is
    // also pixel wo + 1's kw 0.
    __m512 cur = dz_at(0);
    for (int64_t wo = 0; wo + 1 < out_w; ++wo) {
      const __m512 next = dz_at(wo + 1);
      fma_column(Uses<false, true, false>{}, 2 * wo, none, cur, none);
      fma_column(Uses<true, false, true>{}, 2 * wo + 1, next, none, cur);
      cur = next;
    }
    const int64_t last = out_w - 1;
    fma_column(Uses<false, true, false>{}, 2 * last, none, cur, none);
    if (2 * last + 1 < in_w) fma_column(Uses<false, false, true>{}, 2 * last + 1, none, none, cur);
  }
}

// Rows [row0, row1) of a block (16 output channels from c0), kernel row kh and input channels
// ci0 .. ci0 + 7 (8 per group: both groups' 0 .. 7) into the packed gradient buf: the 24
// accumulators stay in registers over the rows, then are added to buf.
template <int kStride, bool kPairs>
inline void accumulate_band(const kernels::ConvGeometry& g, const float* x, const float* dz, int64_t row0,
                            int64_t row1, int64_t c0, int64_t ci0, int64_t kh, bool full,
                            const __m512i (&idx)[8], float* buf) {
  constexpr int64_t kWidth = kPairs ? 8 : 16, kTap = kWidth * kWidth;
  const __mmask16 lanes = narrow::block_lanes(full);
  Accumulators acc;
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t n = row / g.out_h, ho = row % g.out_h, hi = ho * g.stride - 1 + kh;
    if (hi < 0 || hi >= g.in_h) continue;
    const float* xrow = x + ((n * g.in_h + hi) * g.in_w) * g.in_c + c0 + (kPairs ? 0 : ci0);
    const float* dzrow = dz + ((n * g.out_h + ho) * g.out_w) * g.out_c + c0;
    accumulate_row<kStride, kPairs>(acc, xrow, dzrow, g.in_w, g.out_w, g.in_c, g.out_c, lanes, idx);
  }
  // Lanes 0-7 (or all 16) belong to the block's first group, lanes 8-15 to its second (8 per
  // group); accumulator kw * 8 + ci holds input channel ci0 + ci at tap (kh, kw).
  const int64_t group = kPairs ? c0 / 8 : c0 / 16;
#pragma GCC unroll 3
  for (int kw = 0; kw < 3; ++kw)
#pragma GCC unroll 8
    for (int ci = 0; ci < 8; ++ci) {
      const __m512 v = acc(kw * 8 + ci);
      float* at = buf + ((group * 3 + kh) * 3 + kw) * kTap + (ci0 + ci) * kWidth;
      if constexpr (!kPairs) {
        _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), v));
      } else {
        _mm512_mask_storeu_ps(at, 0x00FF, _mm512_add_ps(_mm512_maskz_loadu_ps(0x00FF, at), v));
        if (full) {
          float* second = at + 9 * kTap - 8;  // group + 1's tap, shifted by the 8 lanes
          _mm512_mask_storeu_ps(second, 0xFF00, _mm512_add_ps(_mm512_maskz_loadu_ps(0xFF00, second), v));
        }
      }
    }
}

}  // namespace narrow_wgrad

// The raw weight gradient (see the top of this file) of a conv narrow_weight_grad_applies to:
// per chunk of output rows (chunk_count, merged in chunk order, so every run sums alike), bands of
// kBandRows rows, in each band every (block, kh, 8 input channels) with its 24 accumulators.
inline std::vector<float> grouped_conv_narrow_weight_grad(const kernels::ConvGeometry& g, const float* x,
                                                          const float* dz) {
  // Rows a band: 2 to 16 times the output pixels (224 px: 112 down to 7 a row) ran within
  // 0.97-1.12x of 4 (Ice Lake VM, interleaved).
  constexpr int64_t kBandRows = 4;
  const int64_t width = g.in_c_per_group, tap_size = width * width;
  const int64_t size = g.groups * 9 * tap_size, blocks = (g.out_c + 15) / 16;
  const int64_t rows = g.batch * g.out_h, chunks = chunk_count(rows);
  const int64_t buf_stride = chunk_stride(size, sizeof(float));
  std::vector<float> partial(chunks * buf_stride, 0.f);
  __m512i idx[8];  // input channel ci of both groups of 8
  narrow::half_broadcast_indices(idx);
  // kStride and kPairs (two groups of 8 a block, else one of 16) chosen once for the whole walk.
  const auto walk = [&](auto stride, auto pairs) {
    for_each_chunk(rows, chunks, [&](int64_t chunk, int64_t row0, int64_t row1) {
      float* buf = partial.data() + chunk * buf_stride;
      for (int64_t band = row0; band < row1; band += kBandRows) {
        const int64_t band_end = std::min(row1, band + kBandRows);
        for (int64_t block = 0; block < blocks; ++block) {
          const int64_t c0 = block * 16;
          const bool full = c0 + 16 <= g.out_c;  // else the last group of an odd count of 8
          for (int64_t kh = 0; kh < 3; ++kh)
            for (int64_t ci0 = 0; ci0 < width; ci0 += 8)
              narrow_wgrad::accumulate_band<decltype(stride)::value, decltype(pairs)::value>(
                  g, x, dz, band, band_end, c0, ci0, kh, full, idx, buf);
        }
      }
    });
  };
  if (g.stride == 1)
    width == 8 ? walk(std::integral_constant<int, 1>{}, std::true_type{})
               : walk(std::integral_constant<int, 1>{}, std::false_type{});
  else
    width == 8 ? walk(std::integral_constant<int, 2>{}, std::true_type{})
               : walk(std::integral_constant<int, 2>{}, std::false_type{});
  merge_chunk_sums(partial, chunks, buf_stride, size);
  return partial;
}
#endif

}  // namespace regnet_ext::cpu
