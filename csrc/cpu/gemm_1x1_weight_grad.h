// The weight gradient of a 1x1 conv (float32, channels_last) as our own GEMM:
// dW[co, ci] = sum over the N*H*W pixel rows p of dz[p, co] * x[p, ci], with AVX-512 register
// tiles of MR output channels x NV vectors of 16 input channels (gemm_1x1_tiles.h's shape, the
// pixel rows as the reduction): per pixel, NV vectors of x[p] are loaded once and each of the MR
// values dz[p, co] is broadcast from memory into NV FMAs.
//
// Why: in RegNetX-400MF's training step (batch 8, 2-core Zen 4 VM, 2026-12-05) the 1x1 convs'
// weight gradients ran at 163-171 GFLOP/s through ATen (MKL's sgemm), 384 channels at 7px taking
// 15.5 ms of the 174 ms step; our tiles' forward ran the same shapes at 200-219 standalone.
//
// Blocking: pixel rows in chunks of kChunkRows, so that one vector block of the chunk's x (64
// input channels) stays in L1/L2 while every output-channel tile of the block passes over it; the
// tiles accumulate into dW across chunks (the first starts from zero). Threads take disjoint runs
// of (vector block, output-channel tile) pairs, so each dW element is summed by one thread, in
// pixel order: the result does not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/gemm_1x1_tiles.h"
#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

#if defined(__AVX512F__)
namespace gemm_weight_grad {

using gemm_tiles::kLanes;
constexpr int64_t kChunkRows = 512;

// Output channels per tile for nv vectors: 24 accumulators, but at most 8 rows (12 rows of one or
// two vectors ran at 53-88 GFLOP/s against 195-213 for 4-8 rows: 32 or 160 input channels).
constexpr int tile_rows(int nv) { return nv >= 3 ? 24 / nv : 8; }

// acc[r][v] += sum over `count` pixels of dz[r] * x[16 v ..]: dz and x advance by dz_step and
// x_step floats a pixel (one row each for a 1x1 conv; a tap's stride-spaced input pixels for a
// grouped KxK conv, grouped_conv_wide_weight_grad.h). `last` masks x's final vector.
template <int MR, int NV>
__attribute__((always_inline)) inline void accumulate(__m512 (&acc)[MR][NV], const float* dz, int64_t dz_step,
                                                      const float* x, int64_t x_step, int64_t count, __mmask16 last) {
  for (int64_t p = 0; p < count; ++p, x += x_step, dz += dz_step) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_maskz_loadu_ps(v == NV - 1 ? last : __mmask16(0xFFFF), x + v * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(dz[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
}

// dW rows co0 .. co0+MR-1, input channels ci0 .. ci0 + 16 NV (`last` masks the final vector),
// accumulated over output pixels [p0, p1), whose inputs `x` locates (the forward tiles'
// InputRows): all at once at stride 1, else one run per output row, every stride-th pixel of
// the input row.
template <int MR, int NV>
inline void tile(const float* dz, int64_t out_c, const gemm_tiles::InputRows& x, int64_t p0, int64_t p1, int64_t co0,
                 int64_t ci0, __mmask16 last, bool first, float* dw) {
  const int64_t in_c = x.in_c;
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const __mmask16 lanes = v == NV - 1 ? last : __mmask16(0xFFFF);
      acc[r][v] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(lanes, dw + (co0 + r) * in_c + ci0 + v * kLanes);
    }
  for (int64_t p = p0, count; p < p1; p += count) {
    count = x.stride == 1 ? p1 - p : std::min(p1 - p, x.out_w - p % x.out_w);
    accumulate<MR, NV>(acc, dz + p * out_c + co0, out_c, x(p) + ci0, x.stride * in_c, count, last);
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(dw + (co0 + r) * in_c + ci0 + v * kLanes, v == NV - 1 ? last : __mmask16(0xFFFF),
                            acc[r][v]);
}

}  // namespace gemm_weight_grad
#endif

// dw [out_c, in_c] = dz^T x for dz [rows, out_c] and x [rows, in_c] (both row-major: NHWC
// activations of a stride-1 1x1 conv), float32. A strided 1x1 conv passes its geometry as
// `strided` and its whole NHWC input as x, whose every stride-th pixel the tiles read in place
// (a gathered copy first took 0.48 ms at 32 channels, 32 x 64 x 64 -> 32 x 32 x 32, of about 1 ms
// for that layer's backward; Ice Lake VM, 2026-12-06).
inline void gemm_1x1_weight_grad(const float* dz, const float* x, int64_t rows, int64_t out_c, int64_t in_c,
                                 float* dw, const kernels::ConvGeometry* strided = nullptr) {
#if defined(__AVX512F__)
  using namespace gemm_weight_grad;
  const gemm_tiles::InputRows input = strided ? gemm_tiles::InputRows{x, in_c, strided->in_h, strided->in_w,
                                                                      strided->out_h, strided->out_w, strided->stride}
                                              : gemm_tiles::InputRows{x, in_c, 1, rows, 1, rows, 1};
  if (rows == 0) {
    std::fill(dw, dw + out_c * in_c, 0.0f);
    return;
  }
  const int64_t vectors = gemm_tiles::vectors_of(in_c);
  const int64_t blocks = (vectors + gemm_tiles::kBlockVectors - 1) / gemm_tiles::kBlockVectors;
  const __mmask16 last_mask = static_cast<__mmask16>((1u << (in_c - (vectors - 1) * kLanes)) - 1u);
  // The work: every (vector block, tile of MR output channels) pair, MR by the block's width as
  // in the forward; threads take equal contiguous runs of them.
  std::vector<int64_t> first_item(blocks + 1, 0);
  for (int64_t b = 0; b < blocks; ++b) {
    const int mr = tile_rows(gemm_tiles::block_of(b, vectors).second);
    first_item[b + 1] = first_item[b] + (out_c + mr - 1) / mr;
  }
  const int64_t items = first_item[blocks];
  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t p0 = 0; p0 < rows; p0 += kChunkRows) {
      const int64_t p1 = std::min(rows, p0 + kChunkRows);
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t lo = std::max(i0, first_item[b]), hi = std::min(i1, first_item[b + 1]);
        if (lo >= hi) continue;
        const auto [v0, nv] = gemm_tiles::block_of(b, vectors);
        const __mmask16 mask = v0 + nv == vectors ? last_mask : __mmask16(0xFFFF);
        gemm_tiles::with_block_vectors(nv, [&](auto nv_constant) {
          constexpr int NV = decltype(nv_constant)::value;
          constexpr int MR = tile_rows(NV);
          for (int64_t item = lo; item < hi; ++item) {
            const int64_t co = (item - first_item[b]) * MR;
            if (co + MR <= out_c) {
              tile<MR, NV>(dz, out_c, input, p0, p1, co, v0 * kLanes, mask, p0 == 0, dw);
            } else {
              for (int64_t c = co; c < out_c; ++c)
                tile<1, NV>(dz, out_c, input, p0, p1, c, v0 * kLanes, mask, p0 == 0, dw);
            }
          }
        });
      }
    }
  });
#else
  (void)dz, (void)x, (void)rows, (void)out_c, (void)in_c, (void)dw, (void)strided;
  TORCH_CHECK(false, "gemm_1x1_weight_grad: this build has no AVX-512 kernel");
#endif
}

}  // namespace regnet_ext::cpu
