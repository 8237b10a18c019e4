// 1x1 convs (float32, channels_last) as our own GEMM with the epilogue in registers:
// y[p, :] = act(x[p', :] . W'^T + b' [+ residual[p, :]]) over the N*H*W output pixel rows p, p'
// the input pixel p reads (every stride-th), W' the folded weight. AVX-512 register tiles of MR
// rows x NV vectors of 16 output channels (MR x NV = 24 accumulators of the 32 registers, or 12
// at one vector): per input channel k, NV weight vectors are loaded once and each row's x[p', k]
// is broadcast from memory into NV FMAs.
//
// Why: oneDNN's 1x1 conv ran RegNetY-400MF's 440 -> 440 channels at 7px, batch 8, at 179 GFLOP/s
// and 208 -> 208 at 14px at 194 in the fused forward (2-core AMD EPYC Zen 4 VM, 2026-12-05),
// 77-83% of the 233 GFLOP/s this CPU's FMA units peak at; a standalone prototype of these tiles
// ran the first at 220. In the operator, against oneDNN with the same epilogue (interleaved, same
// VM): 1.00-1.25x at batch 8 (the least from 512 channels at 14px and 128 at 56px up), 1.32-1.56x
// at batch 1, strided ones included; the autotuner keeps whichever is faster per shape.
//
// Layout of the packed weight (pack_gemm_tiles_weight): output channels in blocks of up to 4
// vectors (64 channels; the last block takes the remaining 1-3 vectors), each block a [C_in][16 NV]
// panel read linearly; the last vector zero-padded past C_out (its stores are masked).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/bn_stats.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace regnet_ext::cpu {

inline constexpr bool kHaveGemmTiles =
#if defined(__AVX512F__)
    true;
#else
    false;
#endif

namespace gemm_tiles {

constexpr int64_t kLanes = 16;
constexpr int64_t kBlockVectors = 4;

inline int64_t vectors_of(int64_t out_c) { return (out_c + kLanes - 1) / kLanes; }

// Block b's first vector and its vector count (4, the last one 1-4).
inline std::pair<int64_t, int> block_of(int64_t b, int64_t vectors) {
  const int64_t v0 = b * kBlockVectors;
  return {v0, static_cast<int>(std::min<int64_t>(kBlockVectors, vectors - v0))};
}

}  // namespace gemm_tiles

// body(v0, nv) for every block of output vectors (block_of), the blocks split between threads
// where the weight has 2^16 or more elements (the training passes pack on every call).
template <typename Body>
inline void for_each_panel_block(int64_t vectors, int64_t weight_numel, const Body& body) {
  const int64_t blocks = (vectors + gemm_tiles::kBlockVectors - 1) / gemm_tiles::kBlockVectors;
  at::parallel_for(0, blocks, weight_numel >= (int64_t(1) << 16) ? 1 : blocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const auto [v0, nv] = gemm_tiles::block_of(b, vectors);
      body(v0, nv);
    }
  });
}

// A bias for the tiles (gemm_1x1_tiles, stem_conv_tiles): `channels` float values, zero where
// `bias` is undefined, zero-padded to whole vectors of 16.
inline at::Tensor padded_to_vectors(const at::Tensor& bias, int64_t channels, const at::TensorOptions& options) {
  at::Tensor padded = at::zeros({gemm_tiles::vectors_of(channels) * gemm_tiles::kLanes}, options.dtype(at::kFloat));
  if (bias.defined()) padded.narrow(0, 0, channels).copy_(bias);
  return padded;
}

// k_by_n: [K, N], the reduction by the output channels (a conv's weight transposed; the weight
// itself for its input gradient), float32 -> the panels above, each panel row one contiguous run
// of a row of k_by_n (1088 x 1088: 75 us on two threads).
inline at::Tensor pack_gemm_tiles_panels(const at::Tensor& k_by_n) {
  const at::Tensor w = k_by_n.to(at::kFloat).contiguous();
  const int64_t depth = w.size(0), out_c = w.size(1), vectors = gemm_tiles::vectors_of(out_c);
  at::Tensor packed = at::empty({vectors * gemm_tiles::kLanes * depth}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  for_each_panel_block(vectors, w.numel(), [&](int64_t v0, int nv) {
    float* panel = dst + v0 * gemm_tiles::kLanes * depth;
    const int64_t width = nv * gemm_tiles::kLanes, c0 = v0 * gemm_tiles::kLanes;
    const int64_t valid = std::min(width, out_c - c0);
    for (int64_t k = 0; k < depth; ++k) {
      std::copy(src + k * out_c + c0, src + k * out_c + c0 + valid, panel + k * width);
      std::fill(panel + k * width + valid, panel + (k + 1) * width, 0.0f);
    }
  });
  return packed;
}

#if defined(__AVX512F__)
// rows[i] lane j -> rows[j] lane i: 32-bit, then 64-bit interleaves within 128-bit lanes, then two
// rounds of 128-bit lane shuffles.
inline void transpose_16x16(__m512 (&rows)[16]) {
  __m512 u[16];
  for (int b = 0; b < 4; ++b) {  // rows 4b .. 4b+3 -> u[4b + q]: their elements 4j + q, j = 0..3
    const __m512d lo01 = _mm512_castps_pd(_mm512_unpacklo_ps(rows[4 * b], rows[4 * b + 1]));
    const __m512d hi01 = _mm512_castps_pd(_mm512_unpackhi_ps(rows[4 * b], rows[4 * b + 1]));
    const __m512d lo23 = _mm512_castps_pd(_mm512_unpacklo_ps(rows[4 * b + 2], rows[4 * b + 3]));
    const __m512d hi23 = _mm512_castps_pd(_mm512_unpackhi_ps(rows[4 * b + 2], rows[4 * b + 3]));
    u[4 * b] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo01, lo23));
    u[4 * b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo01, lo23));
    u[4 * b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi01, hi23));
    u[4 * b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi01, hi23));
  }
  for (int q = 0; q < 4; ++q) {  // element q of each 128-bit lane of the four row blocks
    const __m512 even_a = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x88), odd_a = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xDD);
    const __m512 even_b = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x88);
    const __m512 odd_b = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xDD);
    rows[q] = _mm512_shuffle_f32x4(even_a, even_b, 0x88);
    rows[q + 8] = _mm512_shuffle_f32x4(even_a, even_b, 0xDD);
    rows[q + 4] = _mm512_shuffle_f32x4(odd_a, odd_b, 0x88);
    rows[q + 12] = _mm512_shuffle_f32x4(odd_a, odd_b, 0xDD);
  }
}

// The 16 x 16 block at src (rows src_pitch floats apart), transposed: its column r goes to
// dst_row(r), 16 floats.
template <typename DstRow>
inline void copy_transposed_16x16(const float* src, int64_t src_pitch, const DstRow& dst_row) {
  __m512 rows[16];
  for (int r = 0; r < 16; ++r) rows[r] = _mm512_loadu_ps(src + r * src_pitch);
  transpose_16x16(rows);
  for (int r = 0; r < 16; ++r) _mm512_storeu_ps(dst_row(r), rows[r]);
}
#endif

// folded: [C_out, C_in] (or [C_out, C_in, 1, 1]), float32, any strides -> the panels above.
// The transpose goes in blocks of 16 x 16, in registers where both sides are whole (the training
// forward packs on every call: 384 x 384 took 84 us of a 3.3 ms training call of that layer at
// 32 x 4 x 4 with a scalar transpose of 16-channel blocks, 2-core Ice Lake VM, 2026-12-06).
inline at::Tensor pack_gemm_tiles_weight(const at::Tensor& folded) {
  const at::Tensor w = folded.reshape({folded.size(0), folded.size(1)}).to(at::kFloat).contiguous();
  const int64_t out_c = w.size(0), in_c = w.size(1), vectors = gemm_tiles::vectors_of(out_c);
  at::Tensor packed = at::empty({vectors * gemm_tiles::kLanes * in_c}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  constexpr int64_t kStep = 16;
  for_each_panel_block(vectors, w.numel(), [&](int64_t v0, int nv) {
    float* panel = dst + v0 * gemm_tiles::kLanes * in_c;
    const int64_t width = nv * gemm_tiles::kLanes;
    for (int64_t k0 = 0; k0 < in_c; k0 += kStep) {
      const int64_t k1 = std::min(in_c, k0 + kStep);
      for (int64_t a = 0; a < nv; ++a) {  // 16 output channels from c0, panel columns from j0
        const int64_t j0 = a * kStep, c0 = (v0 + a) * kStep, valid = std::min(kStep, out_c - c0);
#if defined(__AVX512F__)
        if (valid == kStep && k1 - k0 == kStep) {
          copy_transposed_16x16(src + c0 * in_c + k0, in_c, [&](int r) { return panel + (k0 + r) * width + j0; });
          continue;
        }
#endif
        for (int64_t j = 0; j < valid; ++j)
          for (int64_t k = k0; k < k1; ++k) panel[k * width + j0 + j] = src[(c0 + j) * in_c + k];
        for (int64_t k = k0; k < k1; ++k) std::fill(panel + k * width + j0 + valid, panel + k * width + j0 + kStep, 0.0f);
      }
    }
  });
  return packed;
}

#if defined(__AVX512F__)
namespace gemm_tiles {

// Where a row's reduction of length count x length reads its input: `count` runs of `length`
// consecutive values, `pitch` apart (a 1x1 conv: one run of C_in; a KxK conv with few input
// channels, stem_conv_tiles.h: K runs of K * C_in, one per kernel row).
struct Runs {
  int64_t count, length, pitch;
};

// One band's running per-channel moments of one block's outputs (the training forward's z):
// mean and m2 of NV * 16 channels over the `count` rows merged so far.
struct BlockMoments {
  float* mean;
  float* m2;
  int64_t count;
};

// Chan's merge (kernels::chan_merge) of the tile's outputs z[r][v] into m, lane by lane: the
// tile's mean first, then its squared deviations from it (kernels::tile_moments).
template <int MR, int NV>
inline void merge_tile_moments(const __m512 (&z)[MR][NV], BlockMoments& m) {
  const float tile_rows = MR, merged = static_cast<float>(m.count) + tile_rows;
  const __m512 inv_rows = _mm512_set1_ps(1.0f / tile_rows), w = _mm512_set1_ps(tile_rows / merged);
  const __m512 w_cross = _mm512_set1_ps(static_cast<float>(m.count) * tile_rows / merged);
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    __m512 sum = z[0][v];
#pragma GCC unroll 24
    for (int r = 1; r < MR; ++r) sum = _mm512_add_ps(sum, z[r][v]);
    const __m512 tile_mean = _mm512_mul_ps(sum, inv_rows);
    __m512 tile_m2 = _mm512_setzero_ps();
#pragma GCC unroll 24
    for (int r = 0; r < MR; ++r) {
      const __m512 d = _mm512_sub_ps(z[r][v], tile_mean);
      tile_m2 = _mm512_fmadd_ps(d, d, tile_m2);
    }
    const __m512 mean = _mm512_loadu_ps(m.mean + v * kLanes), delta = _mm512_sub_ps(tile_mean, mean);
    _mm512_storeu_ps(m.mean + v * kLanes, _mm512_fmadd_ps(delta, w, mean));
    const __m512 m2 = _mm512_add_ps(_mm512_loadu_ps(m.m2 + v * kLanes), tile_m2);
    _mm512_storeu_ps(m.m2 + v * kLanes, _mm512_fmadd_ps(_mm512_mul_ps(delta, delta), w_cross, m2));
  }
  m.count += MR;
}

// acc[r][v] += sum over k < length of x[r][k] * panel[k][v] (panel rows of NV vectors): the
// register tile's inner loop, shared with the wide-group tiles (grouped_conv_wide.h). Always
// inlined: called out of line, the accumulators would live in memory.
template <int MR, int NV>
__attribute__((always_inline)) inline void accumulate(__m512 (&acc)[MR][NV], const float* const (&x)[MR], int64_t length, const float* panel) {
  for (int64_t k = 0; k < length; ++k) {
    __m512 w[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) w[v] = _mm512_loadu_ps(panel + (k * NV + v) * kLanes);
#pragma GCC unroll 24
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(x[r][k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, w[v], acc[r][v]);
    }
  }
}

// y[r] = act(acc[r] + bias [+ residual[r]]) for rows out_c apart, `last` masking the last vector
// (the channels past C_out); acc keeps what was stored.
template <int MR, int NV>
__attribute__((always_inline)) inline void store_rows(__m512 (&acc)[MR][NV], const float* bias, const float* residual, float* y, int64_t out_c,
                       __mmask16 last, bool relu) {
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 24
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 lanes = v == NV - 1 ? last : __mmask16(0xFFFF);
      __m512 out = _mm512_add_ps(acc[r][v], _mm512_loadu_ps(bias + v * kLanes));
      if (residual) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(lanes, residual + r * out_c + v * kLanes));
      // max(0, v) returns its second operand where that is NaN, so a NaN stays NaN as in torch.relu.
      if (relu) out = _mm512_max_ps(zero, out);
      _mm512_mask_storeu_ps(y + r * out_c + v * kLanes, lanes, out);
      acc[r][v] = out;
    }
}

// Rows r0 .. r0+MR-1 (their inputs at x[r]) times the block's NV vectors; `last` masks the
// block's last vector (the channels past C_out); `moments`, where given, takes the outputs.
template <int MR, int NV>
inline void tile(const float* const (&x)[MR], const Runs& runs, const float* panel, const float* bias,
                 const float* residual, float* y, int64_t out_c, __mmask16 last, bool relu,
                 BlockMoments* moments = nullptr) {
  __m512 acc[MR][NV];
#pragma GCC unroll 24
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t run = 0; run < runs.count; ++run, panel += runs.length * NV * kLanes) {
    const float* run_x[MR];
#pragma GCC unroll 24
    for (int r = 0; r < MR; ++r) run_x[r] = x[r] + run * runs.pitch;
    accumulate<MR, NV>(acc, run_x, runs.length, panel);
  }
  store_rows<MR, NV>(acc, bias, residual, y, out_c, last, relu);
  if (moments) merge_tile_moments<MR, NV>(acc, *moments);
}

// Rows per tile for NV vectors: 24 accumulators (12 at one vector, whose loads would otherwise
// outnumber its FMAs).
template <int NV>
constexpr int rows_per_tile() {
  return NV == 1 ? 12 : 24 / NV;
}

inline int64_t rows_per_tile_of(int nv) {
  return nv == 4 ? rows_per_tile<4>() : nv == 3 ? rows_per_tile<3>() : nv == 2 ? rows_per_tile<2>() : rows_per_tile<1>();
}

// Where output row r (pixel n, ho, wo) reads its input: every stride-th pixel of x's rows.
struct InputRows {
  const float* x;
  int64_t in_c, in_h, in_w, out_h, out_w, stride;
  const float* operator()(int64_t r) const {
    if (stride == 1) return x + r * in_c;
    const int64_t per_image = out_h * out_w, n = r / per_image, p = r % per_image;
    return x + ((n * in_h + p / out_w * stride) * in_w + p % out_w * stride) * in_c;
  }
};

template <int MR>
inline void tile_inputs(const InputRows& input, int64_t r, const float* (&x)[MR]) {
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i) x[i] = input(r + i);
}

// body(std::integral_constant<int, R>) for a row count 1 <= r < MR: each compiles its own tile.
template <int MR, int R = MR - 1, typename Body>
inline void with_remainder_rows(int64_t r, const Body& body) {
  if constexpr (R >= 1) {
    if (r == R) return body(std::integral_constant<int, R>{});
    with_remainder_rows<MR, R - 1>(r, body);
  }
}

// body(std::integral_constant<int, R>, r) for the tiles over rows [r0, r1): whole tiles of MR
// rows from r0 on, then the rest (R < MR) as one.
template <int MR, typename Body>
inline void for_each_row_tile(int64_t r0, int64_t r1, const Body& body) {
  int64_t r = r0;
  for (; r + MR <= r1; r += MR) body(std::integral_constant<int, MR>{}, r);
  with_remainder_rows<MR>(r1 - r, [&](auto rows) { body(rows, r); });
}

// Rows [r0, r1) of one block of NV vectors: whole tiles, then the rest as one shorter tile (row
// by row, the rest of a 7x7 batch-8 band took as long as 2.5 of its 32 whole tiles: each row's
// NV accumulators wait on their own FMA chains).
template <int NV>
inline void block_rows(const InputRows& input, const float* panel, const float* bias, const float* residual,
                       float* y, int64_t out_c, __mmask16 last, bool relu, int64_t r0, int64_t r1,
                       BlockMoments* moments) {
  const Runs runs{1, input.in_c, 0};
  for_each_row_tile<rows_per_tile<NV>()>(r0, r1, [&](auto rows, int64_t r) {
    constexpr int R = decltype(rows)::value;
    const float* x[R];
    tile_inputs(input, r, x);
    tile<R, NV>(x, runs, panel, bias, residual ? residual + r * out_c : nullptr, y + r * out_c, out_c, last, relu,
                moments);
  });
}

// body(std::integral_constant<int, NV>) for a block's vector count nv (1-4, block_of): each NV
// compiles its own tiles.
template <typename Body>
inline void with_block_vectors(int nv, const Body& body) {
  switch (nv) {
    case 4: body(std::integral_constant<int, 4>{}); break;
    case 3: body(std::integral_constant<int, 3>{}); break;
    case 2: body(std::integral_constant<int, 2>{}); break;
    default: body(std::integral_constant<int, 1>{}); break;
  }
}

}  // namespace gemm_tiles
#endif

// y = act(conv1x1(x, W', stride) + bias [+ residual]) for a dense NHWC x [batch, in_h, in_w,
// in_c] and y, residual [batch, out_h, out_w, out_c] (rows = batch * out_h * out_w); `packed`
// from pack_gemm_tiles_weight, bias padded to whole vectors. With `stats` (the training forward's
// z: no residual, no ReLU), each thread's band of rows also leaves its per-channel moments of y,
// taken from the tiles in registers, at stats[band * stats_stride + c]; bands number at most
// at::get_num_threads(), and the caller's entries for bands not used stay as they were.
inline void gemm_1x1_tiles(const float* x, int64_t batch, int64_t in_h, int64_t in_w, int64_t in_c, int64_t stride,
                           const float* packed, const float* bias, const float* residual, float* y, int64_t out_c,
                           bool relu, kernels::MomentStats<float>* stats = nullptr, int64_t stats_stride = 0) {
#if defined(__AVX512F__)
  using namespace gemm_tiles;
  const int64_t out_h = (in_h - 1) / stride + 1, out_w = (in_w - 1) / stride + 1, rows = batch * out_h * out_w;
  const InputRows input{x, in_c, in_h, in_w, out_h, out_w, stride};
  const int64_t vectors = vectors_of(out_c), blocks = (vectors + kBlockVectors - 1) / kBlockVectors;
  const __mmask16 last = static_cast<__mmask16>((1u << (out_c - (vectors - 1) * kLanes)) - 1u);
  // Each thread one contiguous band of rows, walking every block of output channels over it: the
  // band's rows stay in this core's cache while the blocks' panels stream past. The bands split
  // the tiles of the first block evenly (the last band may end in a shorter tile): bands in
  // multiples of 24 rows (whole tiles for every NV) split RegNetX-400MF's 392 rows at 7x7, batch
  // 8, as 192 + 200, and the thread with 192 waited.
  const int64_t unit = rows_per_tile_of(block_of(0, vectors).second);
  const int64_t units = (rows + unit - 1) / unit, most = std::max(1, at::get_num_threads());
  if (units == 0) return;
  const int64_t per_band = (units + most - 1) / most;
  const int64_t threads = (units + per_band - 1) / per_band, band = per_band * unit;  // no band empty
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    float mean[kBlockVectors * kLanes], m2[kBlockVectors * kLanes];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = std::min(rows, t * band), r1 = t == threads - 1 ? rows : std::min(rows, r0 + band);
      for (int64_t b = 0; b < blocks; ++b) {
        const auto [v0, nv] = block_of(b, vectors);
        const float* panel = packed + v0 * kLanes * in_c;
        const __mmask16 mask = v0 + nv == vectors ? last : __mmask16(0xFFFF);
        const int64_t c0 = v0 * kLanes;
        const float* res = residual ? residual + c0 : nullptr;
        BlockMoments moments{mean, m2, 0};
        if (stats) {
          std::fill(mean, mean + kBlockVectors * kLanes, 0.0f);
          std::fill(m2, m2 + kBlockVectors * kLanes, 0.0f);
        }
        with_block_vectors(nv, [&](auto vectors) {
          block_rows<decltype(vectors)::value>(input, panel, bias + c0, res, y + c0, out_c, mask, relu, r0, r1,
                                               stats ? &moments : nullptr);
        });
        if (stats)
          for (int64_t c = c0; c < std::min(out_c, c0 + nv * kLanes); ++c)
            stats[t * stats_stride + c] = {static_cast<float>(moments.count), mean[c - c0], m2[c - c0]};
      }
    }
  });
#else
  (void)x, (void)batch, (void)in_h, (void)in_w, (void)in_c, (void)stride, (void)packed, (void)bias, (void)residual,
      (void)y, (void)out_c, (void)relu, (void)stats, (void)stats_stride;
  TORCH_CHECK(false, "gemm_1x1_tiles: this build has no AVX-512 kernel");
#endif
}

}  // namespace regnet_ext::cpu
