// Dense KxK convs with few input channels (a network's stem: RegNet's 3 -> 32 channels, 3x3,
// stride 2, at 224px), float32, channels_last, as the register tiles of gemm_1x1_tiles.h: a row
// of output pixels times blocks of output channels, reduced over the K * K * C_in window, with
// the epilogue (bias [+ residual] [ReLU]) in registers and each output stored once.
//
// In NHWC a window row of K pixels x C_in channels is K * C_in consecutive floats, so a pixel's
// window is K runs of them (gemm_tiles::Runs), one per kernel row. Per output row, its K input
// rows are first copied into a zero-padded buffer (a few KB, in L1), so that the tiles read the
// padding as zeros without a branch.
//
// Why: oneDNN ran RegNetY-400MF's stem at 103 GFLOP/s at batch 8 through our operator and at 61
// in stock PyTorch (kernel benchmark, 2-core AMD EPYC Zen 4 VM, 2026-12-05), against this CPU's
// 233 GFLOP/s FMA peak. The autotuner's timings there: batch 1 130 against 150 us (168 GFLOP/s);
// batch 8 a tie (about 1.1 ms each: writing the 12.8 MB output is most of it).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/gemm_1x1_tiles.h"
#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

// The most input channels the stem tiles take: a window run of K * C_in floats is one tile's
// reduction per kernel row; wider inputs are ordinary convs (oneDNN's).
constexpr int64_t kStemMaxInChannels = 4;

// weight: [C_out, C_in, K, K], float32, any strides -> gemm_1x1_tiles.h's panels over the
// reduction index (kh * K + kw) * C_in + ci, the order of the window's runs in NHWC.
inline at::Tensor pack_stem_tiles_weight(const at::Tensor& weight) {
  return pack_gemm_tiles_weight(weight.permute({0, 2, 3, 1}).reshape({weight.size(0), -1}));
}

#if defined(__AVX512F__)
namespace gemm_tiles {

// One output row's `pixels` pixels (pixel p's window starts at in + p * step) times a block of
// NV vectors: whole tiles, then tiles of 8, 4, 2 and 1 pixels for the rest of the row.
template <int NV>
inline void row_tiles(const float* in, int64_t step, const Runs& runs, const float* panel, const float* bias,
                      const float* residual, float* y, int64_t out_c, __mmask16 last, bool relu, int64_t pixels) {
  int64_t p = 0;
  const auto tiles_of = [&](auto rows) {
    constexpr int R = decltype(rows)::value;
    for (; p + R <= pixels; p += R) {
      const float* x[R];
#pragma GCC unroll 24
      for (int i = 0; i < R; ++i) x[i] = in + (p + i) * step;
      tile<R, NV>(x, runs, panel, bias, residual ? residual + p * out_c : nullptr, y + p * out_c, out_c, last, relu);
    }
  };
  constexpr int MR = rows_per_tile<NV>();
  tiles_of(std::integral_constant<int, MR>{});
  if constexpr (MR > 8) tiles_of(std::integral_constant<int, 8>{});
  if constexpr (MR > 4) tiles_of(std::integral_constant<int, 4>{});
  tiles_of(std::integral_constant<int, 2>{});
  tiles_of(std::integral_constant<int, 1>{});
}

}  // namespace gemm_tiles
#endif

// y = act(conv(x, W') + bias [+ residual]) for NHWC x [batch, in_h, in_w, in_c] (in_c <=
// kStemMaxInChannels) and y, residual [batch, out_h, out_w, out_c]; `packed` from
// pack_stem_tiles_weight, bias padded to whole vectors of 16.
inline void stem_conv_tiles(const kernels::ConvGeometry& g, const float* x, const float* packed, const float* bias,
                            const float* residual, float* y, bool relu) {
#if defined(__AVX512F__)
  using namespace gemm_tiles;
  const int64_t k = g.kernel, in_c = g.in_c, out_c = g.out_c;
  // The padded input columns an output row reads, and the K rows' buffer.
  const int64_t width = (g.out_w - 1) * g.stride + k, pitch = width * in_c;
  const int64_t left = std::min(g.padding, width), right = std::clamp<int64_t>(width - g.padding - g.in_w, 0, width);
  const Runs runs{k, k * in_c, pitch};
  const int64_t vectors = vectors_of(out_c), blocks = (vectors + kBlockVectors - 1) / kBlockVectors;
  const __mmask16 last = static_cast<__mmask16>((1u << (out_c - (vectors - 1) * kLanes)) - 1u);
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> rows(k * pitch);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / g.out_h, ho = t % g.out_h;
      for (int64_t kh = 0; kh < k; ++kh) {
        float* dst = rows.data() + kh * pitch;
        const int64_t hi = ho * g.stride - g.padding + kh;
        if (hi < 0 || hi >= g.in_h) {
          std::fill(dst, dst + pitch, 0.f);
          continue;
        }
        std::fill(dst, dst + left * in_c, 0.f);
        std::fill(dst + (width - right) * in_c, dst + pitch, 0.f);
        const float* src = x + (n * g.in_h + hi) * g.in_w * in_c;
        std::copy(src + (left - g.padding) * in_c, src + (width - right - g.padding) * in_c, dst + left * in_c);
      }
      const int64_t first = t * g.out_w * out_c;  // the row's first output value
      for (int64_t b = 0; b < blocks; ++b) {
        const auto [v0, nv] = block_of(b, vectors);
        const float* panel = packed + v0 * kLanes * runs.count * runs.length;
        const __mmask16 mask = v0 + nv == vectors ? last : __mmask16(0xFFFF);
        const int64_t c0 = v0 * kLanes;
        const float* res = residual ? residual + first + c0 : nullptr;
        float* out = y + first + c0;
        const int64_t step = g.stride * in_c;
        with_block_vectors(nv, [&](auto vectors) {
          row_tiles<decltype(vectors)::value>(rows.data(), step, runs, panel, bias + c0, res, out, out_c, mask, relu,
                                              g.out_w);
        });
      }
    }
  });
#else
  (void)g, (void)x, (void)packed, (void)bias, (void)residual, (void)y, (void)relu;
  TORCH_CHECK(false, "stem_conv_tiles: this build has no AVX-512 kernel");
#endif
}

}  // namespace regnet_ext::cpu
