// Grouped KxK convs with a multiple of 16 channels per group, 32 and more (RegNetY-4.0GF's 64 per
// group, RegNetY-1.6GF's 48, RegNetX-3.2GF's 48 and 128 ...), float32, channels_last, AVX-512.
//
// Why: for these widths oneDNN's channels_last conv runs stride-2 and 7px shapes at 130-190
// GFLOP/s on the 2-core Ice Lake VM, about two thirds of its FMA peak (kernel benchmark,
// 2026-12-06; Winograd, grouped_conv_winograd.h, covers stride 1 only). Each group is a small
// dense conv, so these are the 1x1 GEMM tiles of gemm_1x1_tiles.h with K*K runs per input pixel:
// a register tile of up to 6 output pixels (consecutive in N*H_out*W_out order, so a tile may
// wrap into the next row or image) times up to 4 vectors (64) of one group's output channels;
// for each tap and input channel of the group, the block's weight vectors are loaded once and
// each pixel's input value broadcast into them. A tap that falls in the padding reads a zero run.
// The epilogue (shift, residual, ReLU) is applied in registers and y stored once.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/gemm_1x1_tiles.h"
#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

// The shapes this kernel computes (the caller also needs kHaveGemmTiles: AVX-512).
inline bool wide_group_shape(const kernels::ConvGeometry& g) {
  return g.groups > 1 && g.in_c_per_group == g.out_c_per_group && g.in_c_per_group % 16 == 0 &&
         g.in_c_per_group >= 32;
}

namespace wide_groups {

constexpr int64_t kBlockChannels = gemm_tiles::kBlockVectors * gemm_tiles::kLanes;  // 64

// Block b of a group's outputs: its first channel within the group and its vector count (4, the
// last one 1-4).
inline std::pair<int64_t, int> block_of(int64_t b, int64_t per_group) {
  const int64_t first = b * kBlockChannels;
  return {first, static_cast<int>(std::min<int64_t>(kBlockChannels, per_group - first) / gemm_tiles::kLanes)};
}

inline int64_t blocks_per_group(int64_t per_group) { return (per_group + kBlockChannels - 1) / kBlockChannels; }

}  // namespace wide_groups

// Weights [C_out, G, K, K] (float, BN folded where wanted) -> per group, per block of its outputs
// (wide_groups::block_of), a [K*K][G][NV * 16] panel: block b of group q starts at
// (q * G + 64 b) * K * K * G. Where each output channel's K*K*G weights are dense (a contiguous or
// channels_last weight), blocks of 16 output channels x 16 weights go through registers
// (copy_transposed_16x16), on all threads: the training forward packs on every call, and a scalar copy
// took about 1.5 ms of a 2.2 ms call at 1088 channels, 7px, batch 1 (Ice Lake VM, 2026-12-06).
inline at::Tensor pack_wide_group_weight(const at::Tensor& weight, const kernels::ConvGeometry& g) {
  const int64_t taps = g.kernel * g.kernel, per_group = g.out_c_per_group, cig = g.in_c_per_group;
  const int64_t row = taps * cig;  // one output channel's weights
  const at::Tensor w = weight.to(at::kFloat);
  const auto st = w.strides();
  at::Tensor packed = at::empty({g.out_c * row}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  // Panel row (tap, ci) of the weight at each offset from its output channel's first, if dense.
  std::vector<int64_t> panel_row(row, -1);
  bool dense = st[0] == row;
  for (int64_t ci = 0; ci < cig && dense; ++ci)
    for (int64_t tap = 0; tap < taps; ++tap) {
      const int64_t at = ci * st[1] + tap / g.kernel * st[2] + tap % g.kernel * st[3];
      if (at < 0 || at >= row || panel_row[at] >= 0) {
        dense = false;
        break;
      }
      panel_row[at] = tap * cig + ci;
    }
  const int64_t blocks = wide_groups::blocks_per_group(per_group);
  at::parallel_for(0, g.groups * blocks, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t group = u / blocks;
      const auto [first, nv] = wide_groups::block_of(u % blocks, per_group);
      const int64_t width = nv * gemm_tiles::kLanes, c0 = group * per_group + first;
      float* panel = dst + c0 * row;
      for (int64_t lane0 = 0; lane0 < width; lane0 += gemm_tiles::kLanes) {
#if defined(__AVX512F__)
        if (dense) {
          for (int64_t j0 = 0; j0 < row; j0 += gemm_tiles::kLanes)  // row: a multiple of 16
            copy_transposed_16x16(src + (c0 + lane0) * row + j0, row,
                                  [&](int r) { return panel + panel_row[j0 + r] * width + lane0; });
          continue;
        }
#endif
        for (int64_t lane = lane0; lane < lane0 + gemm_tiles::kLanes; ++lane)
          for (int64_t tap = 0; tap < taps; ++tap)
            for (int64_t ci = 0; ci < cig; ++ci)
              panel[(tap * cig + ci) * width + lane] =
                  src[(c0 + lane) * st[0] + ci * st[1] + tap / g.kernel * st[2] + tap % g.kernel * st[3]];
      }
    }
  });
  return packed;
}

#if defined(__AVX512F__)
namespace wide_groups {

// What every tile of one call reads.
struct Conv {
  const kernels::ConvGeometry& g;
  const float* x;
  const float* zeros;  // in_c_per_group zeros: the run a padding tap reads
  int64_t rows;        // output pixels, N * H_out * W_out
};

// Output pixels r0 .. r0+MR-1 times the NV vectors of one block, whose input channels start at
// x's channel c_in0 and whose panel is `panel`; y, bias and residual at the block's first channel.
template <int MR, int NV>
inline void tile(const Conv& c, int64_t r0, int64_t c_in0, const float* panel, const float* bias,
                 const float* residual, float* y, bool relu) {
  using gemm_tiles::kLanes;
  const kernels::ConvGeometry& g = c.g;
  const int64_t cig = g.in_c_per_group, per_image = g.out_h * g.out_w;
  // Input row of (n, 0), first window row and column of this tile's pixels and of the next
  // tile's, whose taps are prefetched while this tile runs: at stride 2 the window runs of one
  // tile lie one to two rows of the image apart (4352 bytes a pixel at 1088 channels), which the
  // hardware prefetchers did not fetch ahead (1 thread, 1088 channels in groups of 64 at 14px,
  // stride 2, batch 8: 76 GFLOP/s without these prefetches, 90 with them, 111 for the 1x1 tiles
  // on a GEMM of the same size).
  int64_t image_row[2 * MR], hi0[2 * MR], wi0[2 * MR];
  const int64_t ahead = std::min<int64_t>(MR, c.rows - r0 - MR);  // pixels of the next tile
  for (int p = 0; p < MR + ahead; ++p) {
    const int64_t r = r0 + p, n = r / per_image, q = r % per_image;
    image_row[p] = n * g.in_h;
    hi0[p] = q / g.out_w * g.stride - g.padding;
    wi0[p] = q % g.out_w * g.stride - g.padding;
  }
  __m512 acc[MR][NV];
#pragma GCC unroll 24
  for (int p = 0; p < MR; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_ps();
  for (int64_t kh = 0; kh < g.kernel; ++kh)
    for (int64_t kw = 0; kw < g.kernel; ++kw) {
      // Pixel p's run of the group's input channels at this tap, or null in the padding.
      const auto run_of = [&](int64_t p) -> const float* {
        const int64_t hi = hi0[p] + kh, wi = wi0[p] + kw;
        if (hi < 0 || hi >= g.in_h || wi < 0 || wi >= g.in_w) return nullptr;
        return c.x + ((image_row[p] + hi) * g.in_w + wi) * g.in_c + c_in0;
      };
      const float* in[MR];
#pragma GCC unroll 24
      for (int p = 0; p < MR; ++p) {
        const float* run = run_of(p);
        in[p] = run ? run : c.zeros;
      }
      for (int64_t p = MR; p < MR + ahead; ++p)
        if (const char* run = reinterpret_cast<const char*>(run_of(p)))
          for (int64_t byte = 0; byte < cig * int64_t(sizeof(float)); byte += 64) _mm_prefetch(run + byte, _MM_HINT_T0);
      gemm_tiles::accumulate<MR, NV>(acc, in, cig, panel + (kh * g.kernel + kw) * cig * NV * kLanes);
    }
  gemm_tiles::store_rows<MR, NV>(acc, bias, residual ? residual + r0 * g.out_c : nullptr, y + r0 * g.out_c, g.out_c,
                                 __mmask16(0xFFFF), relu);
}

}  // namespace wide_groups
#endif

// y = act(grouped_conv(x, W') + bias [+ residual]) for NHWC x, y and residual, wide_group_shape(g);
// `packed` from pack_wide_group_weight, bias [out_c]. Work goes in units of (group, block, band of
// output pixels), the band fastest, split evenly between the threads: each thread keeps one
// block's panel (K*K*G*64 floats, 147 KB at 64 per group) hot in its L2 over consecutive bands.
inline void grouped_conv_wide(const kernels::ConvGeometry& g, const float* x, const float* packed, const float* bias,
                              const float* residual, float* y, bool relu) {
  // The callers' rules decide; another width would read past the panels.
  TORCH_INTERNAL_ASSERT(wide_group_shape(g), "grouped_conv_wide: ", g.in_c_per_group, " channels per group");
#if defined(__AVX512F__)
  using namespace wide_groups;
  const int64_t rows = g.batch * g.out_h * g.out_w, per_group = g.out_c_per_group, cig = g.in_c_per_group;
  const int64_t blocks = blocks_per_group(per_group), panels = g.groups * blocks;
  const int64_t taps = g.kernel * g.kernel, unit = gemm_tiles::rows_per_tile<gemm_tiles::kBlockVectors>();
  // Enough bands that every thread gets about 8 units, each a whole number of 6-pixel tiles.
  const int64_t threads = std::max(1, at::get_num_threads());
  const int64_t bands = std::clamp<int64_t>((8 * threads + panels - 1) / panels, 1, (rows + unit - 1) / unit);
  const int64_t band = ((rows + bands - 1) / bands + unit - 1) / unit * unit;
  const std::vector<float> zeros(cig, 0.0f);
  const Conv conv{g, x, zeros.data(), rows};
  at::parallel_for(0, panels * bands, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t panel_index = u / bands, r0 = u % bands * band, r1 = std::min(rows, r0 + band);
      if (r0 >= r1) continue;
      const int64_t group = panel_index / blocks;
      const auto [first, nv] = block_of(panel_index % blocks, per_group);
      const int64_t c0 = group * per_group + first;  // the block's first output channel
      const float* panel = packed + c0 * taps * cig;
      const float* res = residual ? residual + c0 : nullptr;
      gemm_tiles::with_block_vectors(nv, [&](auto vectors) {
        constexpr int NV = decltype(vectors)::value;
        gemm_tiles::for_each_row_tile<gemm_tiles::rows_per_tile<NV>()>(r0, r1, [&](auto tile_rows, int64_t r) {
          tile<decltype(tile_rows)::value, NV>(conv, r, group * cig, panel, bias + c0, res, y + c0, relu);
        });
      });
    }
  });
#else
  (void)g, (void)x, (void)packed, (void)bias, (void)residual, (void)y, (void)relu;
  TORCH_CHECK(false, "grouped_conv_wide: this build has no AVX-512 kernel");
#endif
}

}  // namespace regnet_ext::cpu
