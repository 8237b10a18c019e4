// Grouped KxK convs with 8 or 16 channels per group (RegNetY-400MF's and RegNetX-400MF's group
// widths), channels_last, for CPUs with AVX-512 or with AVX2+FMA (namespace narrow_avx2 below;
// a build for the machine it runs on has one of the two): the lanes of a register are
// neighbouring output channels of an NHWC pixel, so outputs store (and residuals load) as whole
// vectors. With AVX-512, 16 lanes:
//  * 16 per group: one group per register; each input value is broadcast from memory and
//    multiplies its input channel's 16 weights.
//  * 8 per group: two neighbouring groups per register. A lane permute spreads input channel ci
//    of both groups (one 16-channel load) over their halves, and one FMA applies the 16 weights.
//    oneDNN's channels_last kernel runs these shapes at 117-185 GFLOP/s on the 2-core AMD EPYC
//    this was written on (a quarter to a third of its FMA peak); the permute+FMA pair issued at
//    5.2 G FMA/s per core in isolation there, two thirds of the FMA-only rate.
//
// Tile: up to 16 consecutive output pixels of one row times 16 output channels (AVX2: 8 pixels
// times one 8-channel group, or 4 pixels times 16 channels), all K*K taps and the group's input
// channels; with AVX-512, 3x3 kernels on images at most 4 wide take 4 whole rows a tile. Pixels
// whose tap falls in the padding read a zero vector, so the inner loop has no branches. The last
// group of an odd count of 8-channel groups (104 = 13 x 8) loads and stores half vectors.
//
// 3x3 kernels (RegNet's) walk the window column by column instead (tile8_k3, tile16_k3; the AVX2
// tiles alike): each input pixel's broadcast (8 per group: its lane permute) is made once per
// input channel and feeds every tap that reads it, three at stride 1. Against the per-tap tiles
// (interleaved A/B, batch 8, 2-core AMD EPYC with AVX-512, 2026-12-05): 8 per group 1.26-1.43x
// at stride 1, 1.02-1.17x at stride 2 (2.0x at 112 px); 16 per group 1.10-1.26x at stride 1,
// 1.00-1.14x at stride 2 (1.2-1.7x at 112 px).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

inline constexpr bool kHaveNarrowGroupKernel =
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
    true;
#else
    false;
#endif

// How pack_narrow_group_weight reads the weight: as it is (the forward's), or as the weight of
// the input gradient's conv (grouped_conv_narrow_dx.h's at stride 2, the forward kernel's at
// stride 1): each group's input and output channels swapped, and at stride 1 the taps flipped.
// (Through a transposed, flipped and reshaped copy first, the two copies took 1.7 ms of a
// RegNetX-400MF training step at 32 x 128, 2-core Ice Lake VM, 2026-12-06.)
enum class NarrowPacking { kForward, kInputGrad, kInputGradFlipped };

// Weights [C_out, G, K, K] (G = 8 or 16 channels per group; float, BN already folded where
// wanted) -> [block][K*K][G ci][16]: block b holds output channels 16b .. 16b+15 in its lanes
// (for G = 8, two groups: group 2b in lanes 0-7, group 2b+1 in lanes 8-15; the missing second
// group of an odd group count is zero). The input-gradient packings need as many output as input
// channels per group.
inline at::Tensor pack_narrow_group_weight(const at::Tensor& weight, const kernels::ConvGeometry& g,
                                           NarrowPacking how = NarrowPacking::kForward) {
  const int64_t k = g.kernel, taps = k * k, cig = g.in_c_per_group, blocks = (g.out_c + 15) / 16;
  TORCH_INTERNAL_ASSERT(how == NarrowPacking::kForward || g.out_c_per_group == cig);
  // Read through the weight's strides: a channels_last weight made contiguous first cost more
  // than the packing (26 us of a training call's 0.2 ms at 384 channels, 3x3, 16 per group).
  const at::Tensor w = weight.to(at::kFloat);
  const auto st = w.strides();
  at::Tensor packed = g.out_c % 16 == 0 ? at::empty({blocks, taps, cig, 16}, w.options())
                                        : at::zeros({blocks, taps, cig, 16}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  const bool swap = how != NarrowPacking::kForward, flip = how == NarrowPacking::kInputGradFlipped;
  for (int64_t co = 0; co < g.out_c; ++co) {
    const int64_t block = co / 16, lane = co % 16, first = co - co % cig;  // the group's first channel
    for (int64_t kh = 0; kh < k; ++kh)
      for (int64_t kw = 0; kw < k; ++kw) {
        const int64_t tap = (flip ? k - 1 - kh : kh) * st[2] + (flip ? k - 1 - kw : kw) * st[3];
        for (int64_t ci = 0; ci < cig; ++ci) {
          const int64_t from = swap ? (first + ci) * st[0] + (co - first) * st[1] : co * st[0] + ci * st[1];
          dst[((block * taps + kh * k + kw) * cig + ci) * 16 + lane] = src[from + tap];
        }
      }
  }
  return packed;
}

// The tile walk both instruction sets share (no intrinsics).
namespace narrow {

// Calls body(tap, src) for every tap of the window whose input row lies inside the image; src[p]
// is output pixel p's input at that tap (up to 16 channels from c0), or zeros in the padding,
// so the caller's inner loop has no branches. T: float or c10::BFloat16 (all-zero bits are 0).
template <int kPixels, typename T, typename Body>
inline void for_each_tap(const kernels::ConvGeometry& g, const T* x, int64_t n, int64_t ho,
                         int64_t wo0, int npix, int64_t c0, const Body& body) {
  alignas(64) static const float zero_floats[16] = {};
  const T* zeros = reinterpret_cast<const T*>(zero_floats);
  for (int64_t kh = 0; kh < g.kernel; ++kh) {
    const int64_t hi = ho * g.stride - g.padding + kh;
    if (hi < 0 || hi >= g.in_h) continue;
    const T* row = x + ((n * g.in_h + hi) * g.in_w) * g.in_c + c0;
    for (int64_t kw = 0; kw < g.kernel; ++kw) {
      const T* src[kPixels];
#pragma GCC unroll 16
      for (int p = 0; p < kPixels; ++p) {
        const int64_t wi = (wo0 + p) * g.stride - g.padding + kw;
        src[p] = (p < npix && wi >= 0 && wi < g.in_w) ? row + wi * g.in_c : zeros;
      }
      body(kh * g.kernel + kw, src);
    }
  }
}

// Runs body(std::integral_constant<int, P>, n, ho, block, tiles) over every task (output row,
// block of 16 output channels), in parallel: a block's weights stay in L1 across a row's `tiles`
// tiles of P pixels. P is the one of kPixelCounts (widest first) that wastes the fewest pixel
// slots on the row (RegNet's rows at 224px: 56, 28, 14, 7; at 128px: 32, 16, 8, 4), the wider
// on a tie.
template <int... kPixelCounts, typename Body>
inline void for_each_row_block(const kernels::ConvGeometry& g, const Body& body) {
  const int64_t blocks16 = (g.out_c + 15) / 16, rows = g.batch * g.out_h;
  auto run = [&](auto pixels) {
    constexpr int P = decltype(pixels)::value;
    const int64_t tiles = (g.out_w + P - 1) / P;
    at::parallel_for(0, rows * blocks16, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t row = t / blocks16;
        body(pixels, row / g.out_h, row % g.out_h, t % blocks16, tiles);
      }
    });
  };
  const auto padded = [&](int p) { return (g.out_w + p - 1) / p * p; };
  int best = 0;
  for (int p : {kPixelCounts...})
    if (best == 0 || padded(p) < padded(best)) best = p;
  // Each P compiles its own body (the counts are distinct).
  ((kPixelCounts == best ? run(std::integral_constant<int, kPixelCounts>{}) : void()), ...);
}

// The bias (null: zeros) padded with zeros to whole blocks of 16 output channels.
inline std::vector<float> bias_per_block(const kernels::ConvGeometry& g, const float* bias) {
  std::vector<float> bias_pad((g.out_c + 15) / 16 * 16, 0.f);
  if (bias) std::copy(bias, bias + g.out_c, bias_pad.begin());
  return bias_pad;
}

// The driver every variant shares: the bias padded to whole blocks of 16, then every tile of
// every task handed to tile(std::integral_constant<int, P>, pk, bias16, n, ho, wo0, npix, c0,
// full), P one of kPixelCounts (see for_each_row_block), pk the task's block of `packed`
// (K*K*G*16 weights per block) and full whether the block holds 16 channels (the last block of
// an odd count of 8-channel groups holds 8).
template <int... kPixelCounts, typename W, typename Tile>
inline void for_each_tile(const kernels::ConvGeometry& g, const W* packed, const float* bias, const Tile& tile) {
  const int64_t block_size = g.kernel * g.kernel * g.in_c_per_group * 16;
  const std::vector<float> bias_pad = bias_per_block(g, bias);
  for_each_row_block<kPixelCounts...>(g, [&](auto pixels, int64_t n, int64_t ho, int64_t block, int64_t tiles) {
    constexpr int P = decltype(pixels)::value;
    const int64_t c0 = block * 16;
    const bool full = c0 + 16 <= g.out_c;
    for (int64_t b = 0; b < tiles; ++b) {
      const int npix = static_cast<int>(std::min<int64_t>(P, g.out_w - b * P));
      tile(pixels, packed + block * block_size, bias_pad.data() + c0, n, ho, b * P, npix, c0, full);
    }
  });
}

// for_each_tile for images at most as wide as a tile: tiles of kRows whole output rows,
// tile(pk, bias16, n, ho0, nrows, c0, full) for rows ho0 .. ho0+nrows of sample n, in parallel
// over (sample, rows, block of 16 output channels), the block fastest.
template <int kRows, typename W, typename Tile>
inline void for_each_rows_tile(const kernels::ConvGeometry& g, const W* packed, const float* bias, const Tile& tile) {
  const int64_t blocks16 = (g.out_c + 15) / 16, block_size = g.kernel * g.kernel * g.in_c_per_group * 16;
  const int64_t row_tiles = (g.out_h + kRows - 1) / kRows;
  const std::vector<float> bias_pad = bias_per_block(g, bias);
  at::parallel_for(0, g.batch * row_tiles * blocks16, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t block = t % blocks16, c0 = block * 16, ho0 = t / blocks16 % row_tiles * kRows;
      tile(packed + block * block_size, bias_pad.data() + c0, t / blocks16 / row_tiles, ho0,
           static_cast<int>(std::min<int64_t>(kRows, g.out_h - ho0)), c0, c0 + 16 <= g.out_c);
    }
  });
}

// The row walk of the 3x3 tiles below (T: float or c10::BFloat16): body(kh, row, j_lo, j_hi) for
// each row kh of the window that lies inside the image, row pointing at the tile's first window
// column (in the padding where the tile starts at the image's left edge; only columns
// j_lo <= j < j_hi are read).
// Column j is tap kw of output pixel window_pixel<kPixels, kStride>(j, kw), where that is >= 0.
template <int kPixels, int kStride>
constexpr int window_columns() {
  return (kPixels - 1) * kStride + 3;
}

template <int kPixels, int kStride, typename T, typename Body>
inline void for_each_window_row(const kernels::ConvGeometry& g, const T* x, int64_t n, int64_t ho, int64_t wo0,
                                int64_t c0, const Body& body) {
  const int64_t w_first = wo0 * kStride - g.padding;
  const int64_t j_lo = std::max<int64_t>(0, -w_first);
  const int64_t j_hi = std::min<int64_t>(window_columns<kPixels, kStride>(), g.in_w - w_first);
  for (int64_t kh = 0; kh < 3; ++kh) {
    const int64_t h_in = ho * kStride - g.padding + kh;
    if (h_in < 0 || h_in >= g.in_h) continue;
    const T* row = x + ((n * g.in_h + h_in) * g.in_w + w_first) * g.in_c + c0;
    // The columns the next tile adds to this row, into L1 while this tile computes (past the
    // row's end they are the next row's or nobody's: a prefetch does not fault, and the address
    // is computed as an integer, not as a pointer past the tensor). Against no prefetch
    // (interleaved, AVX2 VM, 2026-12-04): 1.03-1.10x at 8 per group from 14px on (most at
    // stride 2), 1.00-1.05x at 16; two tiles ahead was no better.
    constexpr int kCols = window_columns<kPixels, kStride>();
#pragma GCC unroll 32
    for (int i = 0; i < kPixels * kStride; ++i)
      __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(row) +
                                                      (kCols + i) * g.in_c * sizeof(T)),
                         0, 3);
    body(kh, row, j_lo, j_hi);
  }
}

template <int kPixels, int kStride>
constexpr int window_pixel(int j, int kw) {
  return j >= kw && (j - kw) % kStride == 0 && (j - kw) / kStride < kPixels ? (j - kw) / kStride : -1;
}

// One input channel of a window row: each column's value, load(j) (a broadcast, or a lane permute
// of its channels), computed once and handed to fma(v, kw, p) for every tap kw that reads it, p
// its output pixel (all unrolled). kClipped: whether the window reaches past the image (j_lo > 0
// or j_hi < the window's width); interior windows skip the per-column test (against testing
// every column, interleaved, AVX2 VM, 2026-12-04: 1.00-1.05x on RegNet's grouped shapes, 1.02x
// for conv_pair_relu at 48 -> 104 channels).
template <int kPixels, int kStride, bool kClipped, typename Load, typename Fma>
inline void walk_columns(int64_t j_lo, int64_t j_hi, const Load& load, const Fma& fma) {
  constexpr int kCols = window_columns<kPixels, kStride>();  // in the condition, GCC 12 stopped unrolling stride 2
#pragma GCC unroll 40
  for (int j = 0; j < kCols; ++j) {
    if (kClipped && (j < j_lo || j >= j_hi)) continue;
    const auto v = load(j);
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      const int p = window_pixel<kPixels, kStride>(j, kw);
      if (p >= 0) fma(v, kw, p);
    }
  }
}

// body(std::bool_constant<clipped>) for a window row's columns [j_lo, j_hi): each variant of the
// column walk compiled once per tile.
template <int kPixels, int kStride, typename Body>
inline void with_clipping(int64_t j_lo, int64_t j_hi, const Body& body) {
  if (j_lo > 0 || j_hi < window_columns<kPixels, kStride>())
    body(std::true_type{});
  else
    body(std::false_type{});
}

// One window row of the 3x3 column-walk tiles: for each of `channels` input channels (or
// bfloat16 pairs) c, wk = weights(kh, c) (the three taps kw of row kh), then every column j's
// load(c, j) handed to fma(v, wk[kw], p) for the taps that read it.
template <int kPixels, int kStride, bool kClipped, typename Weights, typename Load, typename Fma>
inline void walk_row_channels(int64_t kh, int64_t j_lo, int64_t j_hi, int channels, const Weights& weights,
                              const Load& load, const Fma& fma) {
#pragma GCC unroll 1
  for (int c = 0; c < channels; ++c) {
    const auto wk = weights(kh, c);
    walk_columns<kPixels, kStride, kClipped>(j_lo, j_hi, [&](int j) { return load(c, j); },
                                             [&](auto v, int kw, int p) { fma(v, wk[kw], p); });
  }
}

// The 3x3 column-walk tiles' loop over the window rows inside the image, load(row, c, j) reading
// x, the columns outside the image skipped by a test.
template <int kPixels, int kStride, typename T, typename Weights, typename Load, typename Fma>
inline void walk_window(const kernels::ConvGeometry& g, const T* x, int64_t n, int64_t ho, int64_t wo0, int64_t c0,
                        int channels, const Weights& weights, const Load& load, const Fma& fma) {
  for_each_window_row<kPixels, kStride>(g, x, n, ho, wo0, c0, [&](int64_t kh, const T* row, int64_t j_lo,
                                                                  int64_t j_hi) {
    with_clipping<kPixels, kStride>(j_lo, j_hi, [&](auto clipped) {
      walk_row_channels<kPixels, kStride, clipped>(kh, j_lo, j_hi, channels, weights,
                                                   [&](int c, int j) { return load(row, c, j); }, fma);
    });
  });
}

// walk_window with each window row first staged: stage(row, j_lo, j_hi) returns a copy of the
// row's columns holding zeros outside the image, which load(staged, c, j) reads, so every tile
// walks all its columns without a test.
template <int kPixels, int kStride, typename T, typename Weights, typename Stage, typename Load, typename Fma>
inline void walk_staged_window(const kernels::ConvGeometry& g, const T* x, int64_t n, int64_t ho, int64_t wo0,
                               int64_t c0, int channels, const Weights& weights, const Stage& stage, const Load& load,
                               const Fma& fma) {
  for_each_window_row<kPixels, kStride>(g, x, n, ho, wo0, c0, [&](int64_t kh, const T* row, int64_t j_lo,
                                                                  int64_t j_hi) {
    const auto* staged = stage(row, j_lo, j_hi);
    walk_row_channels<kPixels, kStride, false>(kh, j_lo, j_hi, channels, weights,
                                               [&](int c, int j) { return load(staged, c, j); }, fma);
  });
}

}  // namespace narrow

#if defined(__AVX512F__)
namespace narrow {

// The valid lanes of a block of 16 output channels (only the last of an odd count of 8-channel
// groups holds 8).
inline __mmask16 block_lanes(bool full) { return full ? __mmask16(0xFFFF) : __mmask16(0x00FF); }

// One input channel's weights for the three taps (kw = 0, 1, 2) of a window row, in the 3x3
// tiles. Not std::array<__m512, 3>: GCC drops a vector type's attributes as a template argument.
struct ThreeTaps {
  __m512 w[3];
  __m512 operator[](int kw) const { return w[kw]; }
};

// The float32 3x3 tiles' staging (walk_staged_window): a window row's columns
// j_lo <= j < j_hi (the `lanes` of 16 channels at row + j * in_c; a half block must not read past
// its 8, the last pixel's being the tensor's end) copied to cols[16 * j], zeros in the others.
// Each column is then read from x once instead of once per input channel, from aligned storage
// (at 104 or 440 channels, odd multiples of 8, every second pixel starts mid-cache-line), and no
// tile tests its columns against the image's edges: those tests (per column, per input channel)
// made the first and last tiles of each row several times slower than the others.
template <int kCols>
inline const float* stage_window_row(float* cols, const float* row, int64_t in_c, int64_t j_lo, int64_t j_hi,
                                     __mmask16 lanes) {
  for (int64_t j = 0; j < kCols; ++j)
    _mm512_store_ps(cols + 16 * j,
                    j < j_lo || j >= j_hi ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(lanes, row + j * in_c));
  return cols;
}

// Epilogue of a tile: + bias [+ residual] [ReLU], stored to y.
template <int kPixels, typename Acc>
inline void store_tile(const kernels::ConvGeometry& g, const Acc& acc, const float* bias16,
                       const float* residual, float* y, int64_t n, int64_t ho, int64_t wo0, int npix,
                       int64_t c0, __mmask16 lanes, bool relu) {
  const __m512 b = _mm512_maskz_loadu_ps(lanes, bias16);
  const __m512 zero = _mm512_setzero_ps();
  // Unrolled with a guard (not `p < npix`): a runtime index would keep acc in memory.
#pragma GCC unroll 16
  for (int p = 0; p < kPixels; ++p) {
    if (p >= npix) break;
    const int64_t at = ((n * g.out_h + ho) * g.out_w + wo0 + p) * g.out_c + c0;
    __m512 v = _mm512_add_ps(acc(p), b);
    if (residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, residual + at));
    // max(v, 0) would turn NaN into 0; torch.relu keeps it: only lanes below zero become zero.
    if (relu) v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
    _mm512_mask_storeu_ps(y + at, lanes, v);
  }
}

// 8 per group: y[n, ho, wo0 .. wo0+npix) for one pair of groups, act(conv + bias [+ residual]).
// kPixels accumulators and the 8 permute indices stay in registers; weights are memory operands.
template <int kPixels>
inline void tile8(const kernels::ConvGeometry& g, const float* x, const float* packed_pair,
                  const float* bias16, const float* residual, float* y, int64_t n, int64_t ho,
                  int64_t wo0, int npix, int64_t c0, __mmask16 lanes, bool relu, const __m512i (&idx)[8]) {
  __m512 acc[kPixels];
  for (int p = 0; p < kPixels; ++p) acc[p] = _mm512_setzero_ps();
  for_each_tap<kPixels>(g, x, n, ho, wo0, npix, c0, [&](int64_t tap, const float* const (&src)[kPixels]) {
    const float* w = packed_pair + tap * 128;
#pragma GCC unroll 16
    for (int p = 0; p < kPixels; ++p) {
      const __m512 v = _mm512_maskz_loadu_ps(lanes, src[p]);
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c)
        acc[p] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx[c], v), _mm512_loadu_ps(w + 16 * c), acc[p]);
    }
  });
  store_tile<kPixels>(g, [&](int p) { return acc[p]; }, bias16, residual, y, n, ho, wo0, npix, c0, lanes, relu);
}

// 16 per group, one group: each input value is broadcast from memory (no permute) and
// multiplies the 16 weights of its input channel.
template <int kPixels>
inline void tile16(const kernels::ConvGeometry& g, const float* x, const float* packed_group,
                   const float* bias16, const float* residual, float* y, int64_t n, int64_t ho,
                   int64_t wo0, int npix, int64_t c0, bool relu) {
  __m512 acc[kPixels];
  for (int p = 0; p < kPixels; ++p) acc[p] = _mm512_setzero_ps();
  for_each_tap<kPixels>(g, x, n, ho, wo0, npix, c0, [&](int64_t tap, const float* const (&src)[kPixels]) {
    const float* w = packed_group + tap * 256;
#pragma GCC unroll 4
    for (int c = 0; c < 16; ++c) {
      const __m512 wv = _mm512_loadu_ps(w + 16 * c);
#pragma GCC unroll 16
      for (int p = 0; p < kPixels; ++p) acc[p] = _mm512_fmadd_ps(_mm512_set1_ps(src[p][c]), wv, acc[p]);
    }
  });
  store_tile<kPixels>(g, [&](int p) { return acc[p]; }, bias16, residual, y, n, ho, wo0, npix, c0,
                      __mmask16(0xFFFF), relu);
}

// A tile's accumulators, zeroed, in arrays of at most 7: GCC 12 keeps a __m512 array of 8 or
// more (over 448 bytes) in memory across the channel loop of the k3 tiles below, storing and
// reloading every accumulator per input channel (0.6-0.7x the speed of 7 pixels in one array);
// arrays of at most 7 stay in registers. (A 16-pixel tile as 7 + 7 + 2 against 7 + 9: 0.99-1.02x,
// Ice Lake VM, 2026-12-06.) Up to 28: 4 rows of 4 pixels take three arrays, the weight
// gradient's 24 (grouped_conv_narrow_weight_grad.h) four.
template <int kCount>
struct SplitAccumulators {
  static_assert(kCount > 0 && kCount <= 28, "SplitAccumulators: 1 to 28 accumulators");
  static constexpr int size(int k) { return kCount - 7 * k < 0 ? 0 : kCount - 7 * k < 7 ? kCount - 7 * k : 7; }
  __m512 a[size(0)], b[size(1) > 0 ? size(1) : 1], c[size(2) > 0 ? size(2) : 1], d[size(3) > 0 ? size(3) : 1];
  SplitAccumulators() {
    for (auto& v : a) v = _mm512_setzero_ps();
    for (auto& v : b) v = _mm512_setzero_ps();
    for (auto& v : c) v = _mm512_setzero_ps();
    for (auto& v : d) v = _mm512_setzero_ps();
  }
  __m512& operator()(int p) { return p < 7 ? a[p] : p < 14 ? b[p - 7] : p < 21 ? c[p - 14] : d[p - 21]; }
  __m512 operator()(int p) const { return p < 7 ? a[p] : p < 14 ? b[p - 7] : p < 21 ? c[p - 14] : d[p - 21]; }
};

// walk_staged_window for a tile of kRows output rows from ho0 (images at most kPixels wide, the
// row in one tile): the (kRows - 1) * kStride + 3 input rows under the tile are staged once each
// (stage(slot, row, j_lo, j_hi) into slot `slot`; rows outside the image are skipped), then for each
// window row kh and input channel c the weights wk = weights(kh, c) serve every output row r:
// fma(v, wk[kw], r * kPixels + p).
template <int kRows, int kPixels, int kStride, typename T, typename Weights, typename Stage, typename Load,
          typename Fma>
inline void walk_staged_rows(const kernels::ConvGeometry& g, const T* x, int64_t n, int64_t ho0, int64_t c0,
                             int channels, const Weights& weights, const Stage& stage, const Load& load,
                             const Fma& fma) {
  constexpr int kInRows = (kRows - 1) * kStride + 3, kCols = window_columns<kPixels, kStride>();
  const int64_t w_first = -g.padding;
  const int64_t j_lo = std::max<int64_t>(0, -w_first), j_hi = std::min<int64_t>(kCols, g.in_w - w_first);
  const T* staged[kInRows];
  for (int i = 0; i < kInRows; ++i) {
    const int64_t h_in = ho0 * kStride - g.padding + i;
    staged[i] = h_in >= 0 && h_in < g.in_h
                    ? stage(i, x + ((n * g.in_h + h_in) * g.in_w + w_first) * g.in_c + c0, j_lo, j_hi)
                    : nullptr;
  }
  for (int kh = 0; kh < 3; ++kh) {
#pragma GCC unroll 1
    for (int c = 0; c < channels; ++c) {
      const auto wk = weights(kh, c);
#pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) {
        const T* row = staged[r * kStride + kh];
        if (row == nullptr) continue;
        walk_columns<kPixels, kStride, false>(0, kCols, [&](int j) { return load(row, c, j); },
                                              [&](auto v, int kw, int p) { fma(v, wk[kw], r * kPixels + p); });
      }
    }
  }
}

// The float32 3x3 tiles' window walk, accumulating into acc: one output row (kRows 1,
// walk_staged_window: each window row staged in turn) or kRows rows of an image at most kPixels
// wide (walk_staged_rows: the input rows under the tile staged once each), the staging
// stage_window_row's.
template <int kRows, int kPixels, int kStride, typename Weights, typename Load, typename Acc>
inline void walk_staged_tile(const kernels::ConvGeometry& g, const float* x, int64_t n, int64_t ho, int64_t wo0,
                             int64_t c0, int channels, __mmask16 lanes, const Weights& weights, const Load& load,
                             Acc& acc) {
  constexpr int kCols = window_columns<kPixels, kStride>();
  constexpr int kSlots = kRows == 1 ? 1 : (kRows - 1) * kStride + 3;
  alignas(64) float cols[kSlots][kCols * 16];
  const auto fma = [&](__m512 v, __m512 w, int p) { acc(p) = _mm512_fmadd_ps(v, w, acc(p)); };
  if constexpr (kRows == 1) {
    const auto stage = [&](const float* row, int64_t j_lo, int64_t j_hi) {
      return stage_window_row<kCols>(cols[0], row, g.in_c, j_lo, j_hi, lanes);
    };
    walk_staged_window<kPixels, kStride>(g, x, n, ho, wo0, c0, channels, weights, stage, load, fma);
  } else {
    const auto stage = [&](int slot, const float* row, int64_t j_lo, int64_t j_hi) {
      return stage_window_row<kCols>(cols[slot], row, g.in_c, j_lo, j_hi, lanes);
    };
    walk_staged_rows<kRows, kPixels, kStride>(g, x, n, ho, c0, channels, weights, stage, load, fma);
  }
}

// store_tile for each of the first nrows of a tile's kRows output rows (from ho).
template <int kRows, int kPixels, typename Acc>
inline void store_tile_rows(const kernels::ConvGeometry& g, const Acc& acc, const float* bias16,
                            const float* residual, float* y, int64_t n, int64_t ho, int nrows, int64_t wo0,
                            int npix, int64_t c0, __mmask16 lanes, bool relu) {
#pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
    if (r >= nrows) break;
    store_tile<kPixels>(g, [&](int p) { return acc(r * kPixels + p); }, bias16, residual, y, n, ho + r, wo0, npix,
                        c0, lanes, relu);
  }
}

// 3x3 (RegNet's), 8 per group: tile8's registers and weights, with the window walked column by
// column (walk_staged_window): each input pixel's 16 channels are loaded and permuted once per
// input channel and feed every tap that reads them (three at stride 1, one or two at stride 2),
// so permutes per FMA drop from 1 to about 1/3 (stride 1) or 2/3 (stride 2).
template <int kRows, int kPixels, int kStride, bool kFull>
inline void tile8_k3(const kernels::ConvGeometry& g, const float* x, const float* packed_pair,
                     const float* bias16, const float* residual, float* y, int64_t n, int64_t ho, int nrows,
                     int64_t wo0, int npix, int64_t c0, bool relu, const __m512i (&idx)[8]) {
  const __mmask16 lanes = block_lanes(kFull);
  SplitAccumulators<kRows * kPixels> acc;
  const auto weights = [&](int64_t kh, int c) {  // taps (kh, 0..2): 8 input channels x 16 lanes each
    const float* w = packed_pair + kh * 3 * 128 + 16 * c;
    return ThreeTaps{{_mm512_loadu_ps(w), _mm512_loadu_ps(w + 128), _mm512_loadu_ps(w + 256)}};
  };
  // The row's columns staged (stage_window_row); against loading each column from x per input
  // channel with the tests at the image's edges (interleaved, one process, 2-core Ice Lake VM,
  // 2026-12-06, bit-identical results): staging the in-image columns alone 1.05-1.10x on
  // RegNetY-400MF's 8-per-group shapes, and the zeros that drop the tests 1.75-2.42x more (batch 8
  // 1.93-2.42x, 104 channels at 28px 2.08x).
  const auto load = [&](const float* staged, int c, int j) {
    return _mm512_permutexvar_ps(idx[c], _mm512_load_ps(staged + 16 * j));
  };
  walk_staged_tile<kRows, kPixels, kStride>(g, x, n, ho, wo0, c0, 8, lanes, weights, load, acc);
  store_tile_rows<kRows, kPixels>(g, acc, bias16, residual, y, n, ho, nrows, wo0, npix, c0, lanes, relu);
}

// 3x3, 16 per group: tile16 with the column walk (each input value broadcast once for the taps
// that read it).
template <int kRows, int kPixels, int kStride>
inline void tile16_k3(const kernels::ConvGeometry& g, const float* x, const float* packed_group,
                      const float* bias16, const float* residual, float* y, int64_t n, int64_t ho, int nrows,
                      int64_t wo0, int npix, int64_t c0, bool relu) {
  SplitAccumulators<kRows * kPixels> acc;
  const auto weights = [&](int64_t kh, int c) {  // taps (kh, 0..2): 16 input channels x 16 lanes each
    const float* w = packed_group + kh * 3 * 256 + 16 * c;
    return ThreeTaps{{_mm512_loadu_ps(w), _mm512_loadu_ps(w + 256), _mm512_loadu_ps(w + 512)}};
  };
  // The row's columns staged as in tile8_k3 (stage_window_row), each value broadcast from there.
  // Against broadcasting from x with the edge tests (interleaved, same VM and day), RegNetX-400MF's
  // 16-per-group shapes: 2.49-2.75x (160 channels at 14px, 160 at 28px stride 2, 32 at 112px
  // stride 2, batch 8), 1.20x and 1.22x (64 at 28px, batch 8 and 1), 1.25x and 0.99x (384 at 7px,
  // batch 8 and 1).
  const auto load = [&](const float* staged, int c, int j) { return _mm512_set1_ps(staged[16 * j + c]); };
  walk_staged_tile<kRows, kPixels, kStride>(g, x, n, ho, wo0, c0, 16, __mmask16(0xFFFF), weights, load, acc);
  store_tile_rows<kRows, kPixels>(g, acc, bias16, residual, y, n, ho, nrows, wo0, npix, c0, __mmask16(0xFFFF),
                                  relu);
}

// for_each_tile for the column-walk tiles (float32 and bfloat16): one tile per row where the row
// is 14 or 16 wide, else tiles of 8, 7 or 4. Against tiles of 8, 7 or 4 everywhere (interleaved
// A/B, batch 8, AMD EPYC with AVX-512, float32): 1.04-1.09x at 14 and 16 px, but 0.95-0.97x at
// 28-56 px (8 per group), where the row took two or more wide tiles.
template <typename W, typename Tile>
inline void for_each_k3_tile(const kernels::ConvGeometry& g, const W* packed, const float* bias, const Tile& tile) {
  if (g.out_w == 14 || g.out_w == 16)
    for_each_tile<16, 14>(g, packed, bias, tile);
  else
    for_each_tile<8, 7, 4>(g, packed, bias, tile);
}

// idx[k] for _mm512_permutexvar: lanes 0-7 take element k, lanes 8-15 element kHalf + k, so one
// permute hands element k of each of two groups to that group's 8 lanes (kHalf elements a group).
template <int kHalf>
inline void half_broadcast_indices(__m512i (&idx)[kHalf]) {
  for (int k = 0; k < kHalf; ++k) {
    alignas(64) int32_t v[16];
    for (int l = 0; l < 16; ++l) v[l] = (l < 8 ? 0 : kHalf) + k;
    idx[k] = _mm512_load_si512(v);
  }
}

}  // namespace narrow
#endif

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
// AVX2+FMA: 8 lanes. Each input value is broadcast from memory and multiplies one 8-wide row of
// its input channel's weights: 8 per group, one group per register (no permutes); 16 per group,
// one group in two registers. Same packed weights as with AVX-512: a 16-lane block holds two
// 8-channel groups, or one 16-channel group, in its halves. Per (tap, input channel) a tile
// loads its weight rows once and one broadcast per pixel, so loads stay near one per FMA.
namespace narrow_avx2 {

// Epilogue of one 8-channel half of a tile: + bias [+ residual] [ReLU], stored to y.
template <int kPixels>
inline void store_half(const kernels::ConvGeometry& g, const __m256 (&acc)[kPixels], const float* bias8,
                       const float* residual, float* y, int64_t n, int64_t ho, int64_t wo0, int npix, int64_t c0,
                       bool relu) {
  const __m256 b = _mm256_loadu_ps(bias8), zero = _mm256_setzero_ps();
#pragma GCC unroll 16
  for (int p = 0; p < kPixels; ++p) {
    if (p >= npix) break;
    const int64_t at = ((n * g.out_h + ho) * g.out_w + wo0 + p) * g.out_c + c0;
    __m256 v = _mm256_add_ps(acc[p], b);
    if (residual) v = _mm256_add_ps(v, _mm256_loadu_ps(residual + at));
    // Only lanes below zero become zero, so a NaN stays NaN as in torch.relu.
    if (relu) v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
    _mm256_storeu_ps(y + at, v);
  }
}

// 8 per group: one group (channels c0 .. c0+7), its weights `w_group` = [K*K][8 ci][16 lanes]
// with the group's 8 output channels at lane offset 0. (Both groups of a block in one tile, two
// accumulators per pixel at 4 pixels, ran 0.48-1.25x oneDNN on the batch-8 shapes of
// RegNetY-400MF, where this one ran 0.67-1.66x in two other runs.)
template <int kPixels>
inline void tile8(const kernels::ConvGeometry& g, const float* x, const float* w_group, const float* bias8,
                  const float* residual, float* y, int64_t n, int64_t ho, int64_t wo0, int npix, int64_t c0,
                  bool relu) {
  __m256 acc[kPixels];
  for (int p = 0; p < kPixels; ++p) acc[p] = _mm256_setzero_ps();
  narrow::for_each_tap<kPixels>(g, x, n, ho, wo0, npix, c0, [&](int64_t tap, const float* const (&src)[kPixels]) {
    const float* w = w_group + tap * 128;
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) {
      const __m256 wv = _mm256_loadu_ps(w + 16 * c);
#pragma GCC unroll 16
      for (int p = 0; p < kPixels; ++p) acc[p] = _mm256_fmadd_ps(_mm256_broadcast_ss(src[p] + c), wv, acc[p]);
    }
  });
  store_half<kPixels>(g, acc, bias8, residual, y, n, ho, wo0, npix, c0, relu);
}

// 8 per group, 3x3 (RegNet's): the window's rows are walked column by column, and each input
// value is broadcast once and multiplies the weights of every tap that reads it (three at stride
// 1), so loads per FMA drop from 9/8 (tile8: a broadcast per FMA, plus the weight rows) to about
// 1/2. Columns in the padding are skipped; pixels past npix are computed and not stored. 7 pixels:
// at 8 the accumulators, three weight rows and the broadcast value spilled out of the 16
// registers. Against tile8 (interleaved, one run, 2-core AVX2 EPYC VM, 2026-12-04): 1.26-1.35x
// at stride 1 (batch 1 and 8, 7-56px), 0.98-1.16x at stride 2.
template <int kPixels, int kStride>
inline void tile8_k3(const kernels::ConvGeometry& g, const float* x, const float* w_group, const float* bias8,
                     const float* residual, float* y, int64_t n, int64_t ho, int64_t wo0, int npix, int64_t c0,
                     bool relu) {
  __m256 acc[kPixels];
  for (int p = 0; p < kPixels; ++p) acc[p] = _mm256_setzero_ps();
  narrow::for_each_window_row<kPixels, kStride>(g, x, n, ho, wo0, c0, [&](int64_t kh, const float* row,
                                                                          int64_t j_lo, int64_t j_hi) {
    const float* w = w_group + kh * 3 * 128;  // taps (kh, 0..2), 8 input channels x 16 lanes each
    narrow::with_clipping<kPixels, kStride>(j_lo, j_hi, [&](auto clipped) {
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        __m256 wk[3];
        for (int kw = 0; kw < 3; ++kw) wk[kw] = _mm256_loadu_ps(w + kw * 128 + 16 * c);
        const auto load = [&](int j) { return _mm256_broadcast_ss(row + j * g.in_c + c); };
        narrow::walk_columns<kPixels, kStride, clipped>(j_lo, j_hi, load, [&](__m256 v, int kw, int p) {
          acc[p] = _mm256_fmadd_ps(v, wk[kw], acc[p]);
        });
      }
    });
  });
  store_half<kPixels>(g, acc, bias8, residual, y, n, ho, wo0, npix, c0, relu);
}

// 16 per group: one group, output channels c0 .. c0+15 in two registers per pixel.
template <int kPixels>
inline void tile16(const kernels::ConvGeometry& g, const float* x, const float* w_group, const float* bias16,
                   const float* residual, float* y, int64_t n, int64_t ho, int64_t wo0, int npix, int64_t c0,
                   bool relu) {
  __m256 lo[kPixels], hi[kPixels];
  for (int p = 0; p < kPixels; ++p) lo[p] = hi[p] = _mm256_setzero_ps();
  narrow::for_each_tap<kPixels>(g, x, n, ho, wo0, npix, c0, [&](int64_t tap, const float* const (&src)[kPixels]) {
    const float* w = w_group + tap * 256;
#pragma GCC unroll 4
    for (int c = 0; c < 16; ++c) {
      const __m256 w_lo = _mm256_loadu_ps(w + 16 * c), w_hi = _mm256_loadu_ps(w + 16 * c + 8);
#pragma GCC unroll 16
      for (int p = 0; p < kPixels; ++p) {
        const __m256 v = _mm256_broadcast_ss(src[p] + c);
        lo[p] = _mm256_fmadd_ps(v, w_lo, lo[p]);
        hi[p] = _mm256_fmadd_ps(v, w_hi, hi[p]);
      }
    }
  });
  store_half<kPixels>(g, lo, bias16, residual, y, n, ho, wo0, npix, c0, relu);
  store_half<kPixels>(g, hi, bias16 + 8, residual ? residual + 8 : nullptr, y + 8, n, ho, wo0, npix, c0, relu);
}

// 16 per group, 3x3: tile8_k3's column walk, the group's 16 output channels in two registers per
// pixel (loads per FMA 1/2, against 3/4 in tile16). Against tile16 (same run): 1.10-1.16x at
// stride 1, 0.99-1.16x at stride 2.
template <int kPixels, int kStride>
inline void tile16_k3(const kernels::ConvGeometry& g, const float* x, const float* w_group, const float* bias16,
                      const float* residual, float* y, int64_t n, int64_t ho, int64_t wo0, int npix, int64_t c0,
                      bool relu) {
  __m256 lo[kPixels], hi[kPixels];
  for (int p = 0; p < kPixels; ++p) lo[p] = hi[p] = _mm256_setzero_ps();
  narrow::for_each_window_row<kPixels, kStride>(g, x, n, ho, wo0, c0, [&](int64_t kh, const float* row,
                                                                          int64_t j_lo, int64_t j_hi) {
    const float* w = w_group + kh * 3 * 256;  // taps (kh, 0..2), 16 input channels x 16 lanes each
    narrow::with_clipping<kPixels, kStride>(j_lo, j_hi, [&](auto clipped) {
#pragma GCC unroll 2
      for (int c = 0; c < 16; ++c) {
        __m256 wl[3], wh[3];
        for (int kw = 0; kw < 3; ++kw) {
          wl[kw] = _mm256_loadu_ps(w + kw * 256 + 16 * c);
          wh[kw] = _mm256_loadu_ps(w + kw * 256 + 16 * c + 8);
        }
        const auto load = [&](int j) { return _mm256_broadcast_ss(row + j * g.in_c + c); };
        narrow::walk_columns<kPixels, kStride, clipped>(j_lo, j_hi, load, [&](__m256 v, int kw, int p) {
          lo[p] = _mm256_fmadd_ps(v, wl[kw], lo[p]);
          hi[p] = _mm256_fmadd_ps(v, wh[kw], hi[p]);
        });
      }
    });
  });
  store_half<kPixels>(g, lo, bias16, residual, y, n, ho, wo0, npix, c0, relu);
  store_half<kPixels>(g, hi, bias16 + 8, residual ? residual + 8 : nullptr, y + 8, n, ho, wo0, npix, c0, relu);
}

// Every tile of every task (output row, block of 16 channels): 3x3 kernels through tile8_k3 (7
// pixels) and tile16_k3 (4), others through tile8 and tile16. Pixels per tile there (the 16
// registers hold the accumulators, the weights and the broadcast value): 8 or 7 at 8 per group
// (one register each; whichever wastes fewer slots on RegNet's rows of 56, 28, 14 and 7); 4 at
// 16 per group (two each: at 5 pixels, whose registers just fit, 160 channels at 14px and batch 8
// ran 0.52x oneDNN's speed, at 4 pixels 0.95-1.03x).
inline void run(const kernels::ConvGeometry& g, const float* x, const float* packed, const float* bias,
                const float* residual, float* y, bool relu) {
  auto tile = [&](auto pixels, const float* pk, const float* b16, int64_t n, int64_t ho, int64_t wo0, int npix,
                  int64_t c0, bool full) {
    constexpr int P = decltype(pixels)::value;
    if (g.in_c_per_group == 16) {
      tile16<P>(g, x, pk, b16, residual, y, n, ho, wo0, npix, c0, relu);
      return;
    }
    // Both groups of the block on the same pixels: the second reads the cache lines the first
    // brought in.
    tile8<P>(g, x, pk, b16, residual, y, n, ho, wo0, npix, c0, relu);
    if (full) tile8<P>(g, x, pk + 8, b16 + 8, residual, y, n, ho, wo0, npix, c0 + 8, relu);
  };
  if (g.in_c_per_group == 8 && g.kernel == 3) {
    narrow::for_each_tile<7>(g, packed, bias, [&](auto pixels, const float* pk, const float* b16, int64_t n,
                                                  int64_t ho, int64_t wo0, int npix, int64_t c0, bool full) {
      constexpr int P = decltype(pixels)::value;
      const auto k3 = g.stride == 1 ? tile8_k3<P, 1> : tile8_k3<P, 2>;
      k3(g, x, pk, b16, residual, y, n, ho, wo0, npix, c0, relu);
      if (full) k3(g, x, pk + 8, b16 + 8, residual, y, n, ho, wo0, npix, c0 + 8, relu);
    });
  } else if (g.in_c_per_group == 16 && g.kernel == 3) {
    narrow::for_each_tile<4>(g, packed, bias, [&](auto pixels, const float* pk, const float* b16, int64_t n,
                                                  int64_t ho, int64_t wo0, int npix, int64_t c0, bool) {
      constexpr int P = decltype(pixels)::value;
      (g.stride == 1 ? tile16_k3<P, 1> : tile16_k3<P, 2>)(g, x, pk, b16, residual, y, n, ho, wo0, npix, c0, relu);
    });
  } else if (g.in_c_per_group == 8)
    narrow::for_each_tile<8, 7>(g, packed, bias, tile);
  else
    narrow::for_each_tile<4>(g, packed, bias, tile);
}

}  // namespace narrow_avx2
#endif

// y = act(conv(x, W) + bias [+ residual]) for a channels_last float x with 8 or 16 channels per
// group; `packed` from pack_narrow_group_weight, bias and residual may be null (zero). y:
// channels_last, the conv's output shape.
inline void grouped_conv_narrow(const kernels::ConvGeometry& g, const float* x, const float* packed,
                                const float* bias, const float* residual, float* y, bool relu) {
  // The callers' rules decide; a rule that let another width through would read past the tiles.
  TORCH_INTERNAL_ASSERT((g.in_c_per_group == 8 || g.in_c_per_group == 16) && g.out_c_per_group == g.in_c_per_group,
                        "grouped_conv_narrow: needs 8 or 16 channels per group in and out, got ", g.in_c_per_group,
                        " and ", g.out_c_per_group);
#if defined(__AVX512F__)
  __m512i idx[8];  // input channel c of both groups
  narrow::half_broadcast_indices(idx);
  if (g.kernel == 3) {  // RegNet's: tile8_k3, tile16_k3
    // kRows output rows of kPixels from (ho, wo0), the first nrows of them and npix pixels stored.
    auto k3tile = [&](auto rows, auto pixels, const float* pk, const float* bias16, int64_t n, int64_t ho,
                      int nrows, int64_t wo0, int npix, int64_t c0, bool full) {
      constexpr int R = decltype(rows)::value, P = decltype(pixels)::value;
      if (g.in_c_per_group == 8)
        (g.stride == 1 ? (full ? narrow::tile8_k3<R, P, 1, true> : narrow::tile8_k3<R, P, 1, false>)
                       : (full ? narrow::tile8_k3<R, P, 2, true> : narrow::tile8_k3<R, P, 2, false>))(
            g, x, pk, bias16, residual, y, n, ho, nrows, wo0, npix, c0, relu, idx);
      else
        (g.stride == 1 ? narrow::tile16_k3<R, P, 1> : narrow::tile16_k3<R, P, 2>)(g, x, pk, bias16, residual, y, n,
                                                                                  ho, nrows, wo0, npix, c0, relu);
    };
    // Images at most 4 pixels wide (RegNet's last stage at 128 px): tiles of 4 whole rows, 16
    // accumulators. A tile of one such row keeps 4 FMA chains going where the two FMA units need
    // about 8 to stay busy, and reloads the weights every 4 pixels. Against one row per tile
    // (interleaved, one process, 2-core Ice Lake VM, 2026-12-06, bit-identical results): batch 32
    // 1.29x (384 channels, 16 per group) and 1.39x (440, 8 per group); the same from 8 px at stride
    // 2 1.08x and 1.11x; batch 8 1.10x and 1.20x. Tiles of 2 rows: 0.96-1.14x; of 2 rows of 7 or
    // 8 pixels (224 px's last stage, 128 px's third): 0.76-0.98x. Nor did one row of 7 or 8 pixels
    // with the input channels in two halves, each its own set of accumulators (14 or 16 FMA
    // chains, the sets added before the epilogue; one interleaved run): 1.01-1.05x at 16 per
    // group, 0.92-0.96x at 8.
    if (g.out_w <= 4) {
      using Four = std::integral_constant<int, 4>;  // rows, and pixels a row
      narrow::for_each_rows_tile<Four::value>(g, packed, bias, [&](const float* pk, const float* bias16, int64_t n,
                                                                   int64_t ho0, int nrows, int64_t c0, bool full) {
        k3tile(Four{}, Four{}, pk, bias16, n, ho0, nrows, 0, static_cast<int>(g.out_w), c0, full);
      });
      return;
    }
    narrow::for_each_k3_tile(g, packed, bias, [&](auto pixels, const float* pk, const float* bias16, int64_t n,
                                                  int64_t ho, int64_t wo0, int npix, int64_t c0, bool full) {
      k3tile(std::integral_constant<int, 1>{}, pixels, pk, bias16, n, ho, 1, wo0, npix, c0, full);
    });
    return;
  }
  narrow::for_each_tile<16, 14, 8, 7>(g, packed, bias,
                        [&](auto pixels, const float* pk, const float* bias16, int64_t n, int64_t ho, int64_t wo0,
                            int npix, int64_t c0, bool full) {
    constexpr int P = decltype(pixels)::value;
    if (g.in_c_per_group == 8)
      narrow::tile8<P>(g, x, pk, bias16, residual, y, n, ho, wo0, npix, c0, narrow::block_lanes(full), relu, idx);
    else
      narrow::tile16<P>(g, x, pk, bias16, residual, y, n, ho, wo0, npix, c0, relu);
  });
#elif defined(__AVX2__) && defined(__FMA__)
  narrow_avx2::run(g, x, packed, bias, residual, y, relu);
#else
  (void)g, (void)x, (void)packed, (void)bias, (void)residual, (void)y, (void)relu;
  TORCH_CHECK(false, "grouped_conv_narrow: this build has neither an AVX-512 nor an AVX2 kernel");
#endif
}

}  // namespace regnet_ext::cpu
