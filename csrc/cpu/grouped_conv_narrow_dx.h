// Input gradient of a grouped 3x3 conv with stride 2, padding 1 and 8 channels per group (the
// first conv of every RegNetY-400MF stage), AVX2+FMA: the transposed conv of dz, computed by the
// parity of the input pixel. Input row hi = 2m takes tap row kh = 1 of dz row m; hi = 2m + 1 takes
// kh = 0 of dz row m + 1 and kh = 2 of row m; columns alike. So a tile of 8 input pixels along a
// row (2 q0 .. 2 q0 + 7) reads dz columns q0 .. q0 + 4 of one or two dz rows, and each broadcast
// dz value feeds the three taps that read it. Lanes are a group's 8 input channels; every dx
// pixel is written once (no scatter, no zero fill).
// (The stride-1 input gradient is the forward kernel itself: conv_bn_act_backward.cpp.)
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

inline constexpr bool kHaveNarrowStride2InputGrad =
#if defined(__AVX2__) && defined(__FMA__)
    true;
#else
    false;
#endif

#if defined(__AVX2__) && defined(__FMA__)
namespace narrow_dx {

constexpr int kColumns = 4;  // dz columns a tile starts; it computes input pixels 2q0 .. 2q0 + 7

// acc[2p + b] (input pixel wi = 2 (q0 + p) + b) += the taps of dz row `dz_row` (tap row kh:
// `w_row` = its three taps, 128 floats apart, a dz channel's 8 weights 16 floats apart) that
// reach it. dz column q0 + j feeds pixel 2j (tap kw = 1), 2j + 1
// (kw = 2) and 2j - 1 (kw = 0): three FMAs per broadcast. Columns from `cols` on are zero.
inline void add_row(const float* dz_row, int64_t dz_c, const float* w_row, int64_t q0, int64_t cols,
                    __m256 (&acc)[2 * kColumns]) {
  const int64_t avail = cols - q0;
#pragma GCC unroll 8
  for (int c = 0; c < 8; ++c) {
    const __m256 w0 = _mm256_loadu_ps(w_row + 16 * c), w1 = _mm256_loadu_ps(w_row + 128 + 16 * c),
                 w2 = _mm256_loadu_ps(w_row + 256 + 16 * c);
#pragma GCC unroll 5
    for (int j = 0; j <= kColumns; ++j) {
      if (j >= avail) break;
      const __m256 v = _mm256_broadcast_ss(dz_row + (q0 + j) * dz_c + c);
      if (j < kColumns) {
        acc[2 * j] = _mm256_fmadd_ps(v, w1, acc[2 * j]);
        acc[2 * j + 1] = _mm256_fmadd_ps(v, w2, acc[2 * j + 1]);
      }
      if (j > 0) acc[2 * j - 1] = _mm256_fmadd_ps(v, w0, acc[2 * j - 1]);
    }
  }
}

// One tile: input pixels 2 q0 .. 2 q0 + 7 of row hi, one group.
inline void tile(const kernels::ConvGeometry& g, const float* dz, const float* packed_group, float* dx, int64_t n,
                 int64_t hi, int64_t q0, int64_t c0) {
  __m256 acc[2 * kColumns];
  for (int p = 0; p < 2 * kColumns; ++p) acc[p] = _mm256_setzero_ps();
  const int64_t m = hi / 2;
  auto add_dz_row = [&](int64_t ho, int64_t kh) {
    if (ho >= g.out_h) return;
    add_row(dz + ((n * g.out_h + ho) * g.out_w) * g.out_c + c0, g.out_c, packed_group + kh * 3 * 128, q0, g.out_w,
            acc);
  };
  if (hi % 2 == 0) {
    add_dz_row(m, 1);
  } else {
    add_dz_row(m + 1, 0);
    add_dz_row(m, 2);
  }
#pragma GCC unroll 8
  for (int p = 0; p < 2 * kColumns; ++p) {
    const int64_t wi = 2 * q0 + p;
    if (wi >= g.in_w) break;
    _mm256_storeu_ps(dx + ((n * g.in_h + hi) * g.in_w + wi) * g.in_c + c0, acc[p]);
  }
}

}  // namespace narrow_dx
#endif

// dx (channels_last, x's shape) of the conv with geometry g (3x3, stride 2, padding 1, 8 channels
// per group in and out) from dz (channels_last, the conv's output) and `packed`: each group's
// weight transposed (input and output channels swapped, taps as they are) and packed by
// pack_narrow_group_weight (two groups per 16-lane block, as the forward kernel reads them).
inline void grouped_conv_narrow_stride2_input_grad(const kernels::ConvGeometry& g, const float* dz,
                                                   const float* packed, float* dx) {
  TORCH_INTERNAL_ASSERT(g.kernel == 3 && g.stride == 2 && g.padding == 1 && g.in_c_per_group == 8 &&
                            g.out_c_per_group == 8,
                        "grouped_conv_narrow_stride2_input_grad: needs 3x3, stride 2, padding 1, 8 per group");
#if defined(__AVX2__) && defined(__FMA__)
  at::parallel_for(0, g.batch * g.in_h, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.in_h, hi = r % g.in_h;
      for (int64_t group = 0; group < g.groups; ++group)
        for (int64_t q0 = 0; 2 * q0 < g.in_w; q0 += narrow_dx::kColumns)
          narrow_dx::tile(g, dz, packed + (group / 2) * 9 * 8 * 16 + (group % 2) * 8, dx, n, hi, q0, group * 8);
    }
  });
#else
  (void)dz, (void)packed, (void)dx;
  TORCH_CHECK(false, "grouped_conv_narrow_stride2_input_grad: this build has no AVX2+FMA kernel");
#endif
}

}  // namespace regnet_ext::cpu
