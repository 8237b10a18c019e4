// The narrow-group conv (grouped_conv_narrow.h) in bfloat16, for CPUs with AVX512-BF16: 8 or 16
// channels per group, channels_last bfloat16 in and out, float32 accumulation.
//
// vdpbf16ps multiplies 16 pairs of bfloat16 and adds both products of each pair to one float
// lane, so one instruction covers two input channels: a 32-bit element of an NHWC pixel holds
// the pair (2k, 2k+1) of a group. 8 per group: one 256-bit load brings both groups' 8 channels
// (4 pairs each), a dword permute hands pair k of each group to its 8 lanes, and vdpbf16ps applies
// the 16 lanes' weights for that pair: 4 permutes and 4 dot products per pixel and tap where
// float32 needs 8 and 8. 16 per group: each pair is broadcast from memory, 8 dot products. The
// products are exact and summed in float32, as in oneDNN's bfloat16 convs (which use the same
// instruction); the result is rounded to bfloat16 once, after scale, bias, residual and ReLU.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/grouped_conv_narrow.h"
#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

inline constexpr bool kHaveNarrowGroupBf16Kernel =
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    true;
#else
    false;
#endif

// Weights [C_out, G, K, K] (G = 8 or 16; BN already folded where wanted) -> bfloat16
// [block][K*K][G/2 pairs][16 lanes][2]: lane l of block b is output channel 16b + l (for G = 8,
// group 2b in lanes 0-7 and group 2b+1 in lanes 8-15, zero for a missing last group), and holds
// that channel's weights for input channels 2k and 2k+1 of its group.
inline at::Tensor pack_narrow_group_weight_bf16(const at::Tensor& weight, const kernels::ConvGeometry& g) {
  const int64_t k = g.kernel, taps = k * k, pairs = g.in_c_per_group / 2, blocks = (g.out_c + 15) / 16;
  const at::Tensor w = weight.to(at::kBFloat16);
  const auto st = w.strides();
  at::Tensor packed = g.out_c % 16 == 0 ? at::empty({blocks, taps, pairs, 16, 2}, w.options())
                                        : at::zeros({blocks, taps, pairs, 16, 2}, w.options());
  const c10::BFloat16* src = w.const_data_ptr<c10::BFloat16>();
  c10::BFloat16* dst = packed.data_ptr<c10::BFloat16>();
  for (int64_t co = 0; co < g.out_c; ++co) {
    const int64_t block = co / 16, lane = co % 16;
    for (int64_t kh = 0; kh < k; ++kh)
      for (int64_t kw = 0; kw < k; ++kw)
        for (int64_t ci = 0; ci < g.in_c_per_group; ++ci)
          dst[(((block * taps + kh * k + kw) * pairs + ci / 2) * 16 + lane) * 2 + ci % 2] =
              src[co * st[0] + ci * st[1] + kh * st[2] + kw * st[3]];
  }
  return packed;
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
namespace narrow_bf16 {

// 16 (or, for a half block, 8) bfloat16 values widened to float lanes.
inline __m512 load_widened(const c10::BFloat16* p, __mmask16 lanes) {
  const __m256i raw = _mm256_maskz_loadu_epi16(lanes, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// Epilogue of a tile: * scale (where given) + bias [+ residual] [ReLU], rounded to bfloat16 and
// stored to y.
template <int kPixels, typename Acc>
inline void store_tile(const kernels::ConvGeometry& g, const Acc& acc, const float* scale16, const float* bias16,
                       const c10::BFloat16* residual, c10::BFloat16* y, int64_t n, int64_t ho, int64_t wo0,
                       int npix, int64_t c0, __mmask16 lanes, bool relu) {
  const __m512 b = _mm512_maskz_loadu_ps(lanes, bias16);
  const __m512 sc = scale16 ? _mm512_maskz_loadu_ps(lanes, scale16) : _mm512_set1_ps(1.f);
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int p = 0; p < kPixels; ++p) {
    if (p >= npix) break;
    const int64_t at = ((n * g.out_h + ho) * g.out_w + wo0 + p) * g.out_c + c0;
    __m512 v = _mm512_fmadd_ps(acc(p), sc, b);
    if (residual) v = _mm512_add_ps(v, load_widened(residual + at, lanes));
    // Only lanes below zero become zero: NaN passes, as through torch.relu.
    if (relu) v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
    _mm256_mask_storeu_epi16(y + at, lanes, (__m256i)_mm512_cvtneps_pbh(v));
  }
}

// 8 per group: y[n, ho, wo0 .. wo0+npix) for one pair of groups.
template <int kPixels>
inline void tile8(const kernels::ConvGeometry& g, const c10::BFloat16* x, const c10::BFloat16* packed_pair,
                  const float* scale16, const float* bias16, const c10::BFloat16* residual, c10::BFloat16* y,
                  int64_t n, int64_t ho, int64_t wo0, int npix, int64_t c0, __mmask16 lanes, bool relu,
                  const __m512i (&idx)[4]) {
  __m512 acc[kPixels];
  for (int p = 0; p < kPixels; ++p) acc[p] = _mm512_setzero_ps();
  narrow::for_each_tap<kPixels>(g, x, n, ho, wo0, npix, c0,
                                [&](int64_t tap, const c10::BFloat16* const (&src)[kPixels]) {
    const c10::BFloat16* w = packed_pair + tap * 128;  // 4 pairs x 16 lanes x 2
#pragma GCC unroll 16
    for (int p = 0; p < kPixels; ++p) {
      const __m512i v = _mm512_castsi256_si512(_mm256_maskz_loadu_epi16(lanes, src[p]));
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k)
        acc[p] = _mm512_dpbf16_ps(acc[p], (__m512bh)_mm512_permutexvar_epi32(idx[k], v),
                                  (__m512bh)_mm512_loadu_si512(w + 32 * k));
    }
  });
  store_tile<kPixels>(g, [&](int p) { return acc[p]; }, scale16, bias16, residual, y, n, ho, wo0, npix, c0,
                      lanes, relu);
}

// 16 per group, one group: each input pair is broadcast from memory.
template <int kPixels>
inline void tile16(const kernels::ConvGeometry& g, const c10::BFloat16* x, const c10::BFloat16* packed_group,
                   const float* scale16, const float* bias16, const c10::BFloat16* residual, c10::BFloat16* y,
                   int64_t n, int64_t ho, int64_t wo0, int npix, int64_t c0, bool relu) {
  __m512 acc[kPixels];
  for (int p = 0; p < kPixels; ++p) acc[p] = _mm512_setzero_ps();
  narrow::for_each_tap<kPixels>(g, x, n, ho, wo0, npix, c0,
                                [&](int64_t tap, const c10::BFloat16* const (&src)[kPixels]) {
    const c10::BFloat16* w = packed_group + tap * 256;  // 8 pairs x 16 lanes x 2
#pragma GCC unroll 2
    for (int k = 0; k < 8; ++k) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + 32 * k);
#pragma GCC unroll 16
      for (int p = 0; p < kPixels; ++p) {
        int32_t pair;
        std::memcpy(&pair, src[p] + 2 * k, sizeof(pair));
        acc[p] = _mm512_dpbf16_ps(acc[p], (__m512bh)_mm512_set1_epi32(pair), wv);
      }
    }
  });
  store_tile<kPixels>(g, [&](int p) { return acc[p]; }, scale16, bias16, residual, y, n, ho, wo0, npix, c0,
                      __mmask16(0xFFFF), relu);
}

// ThreeTaps (grouped_conv_narrow.h) for bfloat16 pairs: a window row's three taps of one pair
// of input channels.
struct ThreeTapPairs {
  __m512i w[3];
  __m512i operator[](int kw) const { return w[kw]; }
};

// 3x3, 8 per group: tile8 with the window walked column by column (narrow::walk_window, as the
// float32 tile8_k3): each pixel's pair k of both groups is permuted once and feeds every tap that
// reads it.
template <int kPixels, int kStride, bool kFull>
inline void tile8_k3(const kernels::ConvGeometry& g, const c10::BFloat16* x, const c10::BFloat16* packed_pair,
                     const float* scale16, const float* bias16, const c10::BFloat16* residual, c10::BFloat16* y,
                     int64_t n, int64_t ho, int64_t wo0, int npix, int64_t c0, bool relu, const __m512i (&idx)[4]) {
  const __mmask16 lanes = narrow::block_lanes(kFull);
  narrow::SplitAccumulators<kPixels> acc;
  const auto weights = [&](int64_t kh, int k) {  // taps (kh, 0..2): 4 pairs x 16 lanes x 2 each
    const c10::BFloat16* w = packed_pair + kh * 3 * 128 + 32 * k;
    return ThreeTapPairs{{_mm512_loadu_si512(w), _mm512_loadu_si512(w + 128), _mm512_loadu_si512(w + 256)}};
  };
  const auto load = [&](const c10::BFloat16* row, int k, int j) {
    const c10::BFloat16* at = row + j * g.in_c;
    const __m256i v = kFull ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at))
                            : _mm256_maskz_loadu_epi16(lanes, at);
    return _mm512_permutexvar_epi32(idx[k], _mm512_castsi256_si512(v));
  };
  narrow::walk_window<kPixels, kStride>(g, x, n, ho, wo0, c0, 4, weights, load, [&](__m512i v, __m512i w, int p) {
    acc(p) = _mm512_dpbf16_ps(acc(p), (__m512bh)v, (__m512bh)w);
  });
  store_tile<kPixels>(g, acc, scale16, bias16, residual, y, n, ho, wo0, npix, c0, lanes, relu);
}

// 3x3, 16 per group: tile16 with the column walk (each input pair broadcast once for the taps
// that read it).
template <int kPixels, int kStride>
inline void tile16_k3(const kernels::ConvGeometry& g, const c10::BFloat16* x, const c10::BFloat16* packed_group,
                      const float* scale16, const float* bias16, const c10::BFloat16* residual, c10::BFloat16* y,
                      int64_t n, int64_t ho, int64_t wo0, int npix, int64_t c0, bool relu) {
  narrow::SplitAccumulators<kPixels> acc;
  const auto weights = [&](int64_t kh, int k) {  // taps (kh, 0..2): 8 pairs x 16 lanes x 2 each
    const c10::BFloat16* w = packed_group + kh * 3 * 256 + 32 * k;
    return ThreeTapPairs{{_mm512_loadu_si512(w), _mm512_loadu_si512(w + 256), _mm512_loadu_si512(w + 512)}};
  };
  const auto load = [&](const c10::BFloat16* row, int k, int j) {
    int32_t pair;
    std::memcpy(&pair, row + j * g.in_c + 2 * k, sizeof(pair));
    return _mm512_set1_epi32(pair);
  };
  narrow::walk_window<kPixels, kStride>(g, x, n, ho, wo0, c0, 8, weights, load, [&](__m512i v, __m512i w, int p) {
    acc(p) = _mm512_dpbf16_ps(acc(p), (__m512bh)v, (__m512bh)w);
  });
  store_tile<kPixels>(g, acc, scale16, bias16, residual, y, n, ho, wo0, npix, c0, __mmask16(0xFFFF), relu);
}

}  // namespace narrow_bf16
#endif

// y = act(conv(x, W) * scale + bias [+ residual]) for channels_last bfloat16 x, y and residual
// with 8 or 16 channels per group; `packed` from pack_narrow_group_weight_bf16, scale and bias
// (float, per output channel; may be null: one and zero) and residual (may be null). Eval passes
// BN's scale here rather than folding it into the bfloat16 weight, whose rounding would move the
// result by 2^-9 of the products' magnitude even where it is near zero.
inline void grouped_conv_narrow_bf16(const kernels::ConvGeometry& g, const c10::BFloat16* x,
                                     const c10::BFloat16* packed, const float* scale, const float* bias,
                                     const c10::BFloat16* residual, c10::BFloat16* y, bool relu) {
  TORCH_INTERNAL_ASSERT((g.in_c_per_group == 8 || g.in_c_per_group == 16) && g.out_c_per_group == g.in_c_per_group,
                        "grouped_conv_narrow_bf16: needs 8 or 16 channels per group in and out, got ",
                        g.in_c_per_group, " and ", g.out_c_per_group);
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  __m512i idx[4];  // input channel pair k of both groups
  narrow::half_broadcast_indices(idx);
  std::vector<float> scale_pad;  // per block of 16 output channels, as for_each_tile pads the bias
  if (scale) {
    scale_pad.assign((g.out_c + 15) / 16 * 16, 1.f);
    std::copy(scale, scale + g.out_c, scale_pad.begin());
  }
  auto scale16 = [&](int64_t c0) { return scale ? scale_pad.data() + c0 : nullptr; };
  // 3x3 (RegNet's): the column walk (narrow::for_each_k3_tile), except for 8 per group at
  // stride 2 on rows under 56 pixels, where it lost to the per-tap tiles (interleaved A/B, AMD EPYC
  // with AVX512-BF16, batch 1 and 8: 0.78-0.86x at 7 px out, 0.95-1.01x at 14, 1.00-1.07x at 28;
  // 1.16-1.55x at 56). Elsewhere 1.12-1.39x at stride 1 (batch 8) and 1.01-1.21x at stride 2.
  const bool column_walk = g.kernel == 3 && !(g.in_c_per_group == 8 && g.stride == 2 && g.out_w < 56);
  if (column_walk) {
    auto k3tile = [&](auto pixels, const c10::BFloat16* pk, const float* bias16, int64_t n, int64_t ho,
                      int64_t wo0, int npix, int64_t c0, bool full) {
      constexpr int P = decltype(pixels)::value;
      if (g.in_c_per_group == 8)
        (g.stride == 1 ? (full ? narrow_bf16::tile8_k3<P, 1, true> : narrow_bf16::tile8_k3<P, 1, false>)
                       : (full ? narrow_bf16::tile8_k3<P, 2, true> : narrow_bf16::tile8_k3<P, 2, false>))(
            g, x, pk, scale16(c0), bias16, residual, y, n, ho, wo0, npix, c0, relu, idx);
      else
        (g.stride == 1 ? narrow_bf16::tile16_k3<P, 1> : narrow_bf16::tile16_k3<P, 2>)(
            g, x, pk, scale16(c0), bias16, residual, y, n, ho, wo0, npix, c0, relu);
    };
    narrow::for_each_k3_tile(g, packed, bias, k3tile);
    return;
  }
  narrow::for_each_tile<16, 14, 8, 7>(g, packed, bias,
                        [&](auto pixels, const c10::BFloat16* pk, const float* bias16, int64_t n, int64_t ho,
                            int64_t wo0, int npix, int64_t c0, bool full) {
    constexpr int P = decltype(pixels)::value;
    if (g.in_c_per_group == 8)
      narrow_bf16::tile8<P>(g, x, pk, scale16(c0), bias16, residual, y, n, ho, wo0, npix, c0,
                            narrow::block_lanes(full), relu, idx);
    else
      narrow_bf16::tile16<P>(g, x, pk, scale16(c0), bias16, residual, y, n, ho, wo0, npix, c0, relu);
  });
#else
  (void)g, (void)x, (void)packed, (void)scale, (void)bias, (void)residual, (void)y, (void)relu;
  TORCH_CHECK(false, "grouped_conv_narrow_bf16: this build has no AVX512-BF16 kernel");
#endif
}

}  // namespace regnet_ext::cpu
