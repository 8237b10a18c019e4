// Grouped 3x3 stride-1 convs with a multiple of 8 channels per group up to 64, or 120 or 128
// (RegNet's 24, 40, 48, 56, 64, 120, 128), channels_last float32, by Winograd F(2x2, 3x3): each
// 2x2 output tile costs 16 multiplies per (input, output) channel pair instead of 36, 2.25x fewer.
// Groups whose width is not a multiple of 16 are padded to one inside the kernel's buffers.
//
// Why: oneDNN's direct grouped conv already runs at about this CPU's FMA peak for 64 channels
// per group (340-465 GFLOP/s on the 2-core AMD EPYC this was written on), so a direct kernel
// cannot be much faster; fewer multiplies can.
//
// Schedule, per task (group, one register block of output tiles of the batch; 16 per group: two):
//  1. input transform V = B^T d B of the task's 4x4 input tiles, 16 channels per vector,
//     into V[16 positions][tiles][channels] (zero outside the image: padding 1);
//  2. per block of tiles and 16-64 output channels: 16 small GEMMs M[xi] = V[xi] U[xi] with the
//     accumulators in registers (U = G g G^T, precomputed per weight: pack_winograd_weight);
//  3. output transform Y = A^T M A of the block, + bias [+ residual] [ReLU], stored once.
// The task's V and the block's M stay in L1/L2; U (16 x G x G floats per group) in L2.
// Results differ from a direct conv's by rounding only (about 2e-7 of the output's magnitude in
// float32), except that a NaN or infinity in an input tile reaches all four outputs of the tile
// where a direct conv would spare those outside its 3x3 reach.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

// The kernel is written with 512-bit vectors; other targets keep oneDNN (use_winograd_kernel).
// An AVX2 build of it (8-lane vectors, 6 tiles x 16 or 12 tiles x 8 output channels in
// registers) ran 0.61-0.85x oneDNN's speed on RegNet's 32-120 channels per group, batch 1 and 8
// (2-core AMD EPYC VM without AVX-512, where oneDNN's direct conv ran at 139 GFLOP/s of the
// VM's 147 GFLOP/s sgemm), so it was not kept.
inline constexpr bool kHaveWinogradKernel =
#if defined(__AVX512F__)
    true;
#else
    false;
#endif

namespace winograd {

typedef float v16 __attribute__((vector_size(64)));
constexpr int kLanes = 16;
constexpr int kPositions = 16;  // 4x4 transformed tile

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, const v16& v) { std::memcpy(p, &v, sizeof(v)); }
// The first n <= 16 lanes (a group of 40 or 56 channels ends in a half vector; the other lanes
// load as zero), masked only for partial vectors: a variable-length memcpy made the compiler
// spill every tile to the stack, and masked stores of full vectors took 56px layers from 1.4x
// oneDNN's speed to 1.0x on the AMD EPYC.
inline v16 load_n(const float* p, int64_t n) {
  if (n == kLanes) return load(p);
#if defined(__AVX512F__)
  return (v16)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
#else
  v16 v = {};
  std::memcpy(&v, p, n * sizeof(float));
  return v;
#endif
}
inline void store_n(float* p, const v16& v, int64_t n) {
  if (n == kLanes) return store(p, v);
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), (__m512)v);
#else
  std::memcpy(p, &v, n * sizeof(float));
#endif
}

// Channels per group rounded up to whole vectors: the row length of V, U and M.
inline int64_t padded_width(int64_t group_width) { return (group_width + kLanes - 1) / kLanes * kLanes; }

}  // namespace winograd

// Whether the kernel can compute this conv (use_winograd_kernel decides whether it should):
// a multiple of 8 channels per group that pads to 16, 32, 48, 64 or 128 (the register blocks).
inline bool winograd_applies(const kernels::ConvGeometry& g) {
  const int64_t gw = g.in_c_per_group, padded = winograd::padded_width(gw);
  return g.kernel == 3 && g.stride == 1 && g.padding == 1 && g.groups > 1 &&
         g.in_c_per_group == g.out_c_per_group && gw % 8 == 0 && (padded <= 64 || padded == 128);
}

// Weights [C_out, G, 3, 3] (BN already folded where wanted) -> U[group][16][G ci][P co] in float,
// P = padded_width(G) with zeros past G, U = G g G^T with G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]. transposed: the
// weights of the input gradient instead (a stride-1 conv of the output gradient with each kernel
// flipped and input and output channels swapped). Runs once per change of an eval weight and on
// every training call, so the innermost loop runs over contiguous output channels.
inline at::Tensor pack_winograd_weight(const at::Tensor& weight, const kernels::ConvGeometry& g,
                                       bool transposed = false) {
  const int64_t gw = g.in_c_per_group, gwp = winograd::padded_width(gw);
  // [group][co][ci][kh][kw] -> [group][ci][kh][kw][co] (or, transposed, the roles swapped and the
  // taps flipped), so that a row of 16 output channels is contiguous.
  // Read through the weight's strides (a channels_last weight made contiguous and permuted
  // first cost two copies); tap(kh, kw, co) is that kernel of row (group, ci).
  const at::Tensor w = weight.to(at::kFloat);
  const int64_t s0 = w.stride(0), s1 = w.stride(1), s2 = w.stride(2), s3 = w.stride(3);
  at::Tensor packed = gw == gwp ? at::empty({g.groups, winograd::kPositions, gw, gwp}, w.options())
                                : at::zeros({g.groups, winograd::kPositions, gw, gwp}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, g.groups * gw, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> t(12 * gw);  // G g for one (group, ci): [4][3][co]
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t group = r / gw, ci = r % gw;
      // Forward: W[group*gw + co][ci][kh][kw]; transposed: W[group*gw + ci][co], taps flipped.
      const float* row = src + (group * gw) * s0;
      auto tap = [&](int kh, int kw, int64_t co) {
        return transposed ? row[ci * s0 + co * s1 + (2 - kh) * s2 + (2 - kw) * s3]
                          : row[co * s0 + ci * s1 + kh * s2 + kw * s3];
      };
      for (int c = 0; c < 3; ++c)
        for (int64_t co = 0; co < gw; ++co) {
          const float k0 = tap(0, c, co), k1 = tap(1, c, co), k2 = tap(2, c, co);
          t[(0 * 3 + c) * gw + co] = k0;
          t[(1 * 3 + c) * gw + co] = 0.5f * (k0 + k1 + k2);
          t[(2 * 3 + c) * gw + co] = 0.5f * (k0 - k1 + k2);
          t[(3 * 3 + c) * gw + co] = k2;
        }
      for (int a = 0; a < 4; ++a) {
        const float* ta = t.data() + a * 3 * gw;
        float* out = dst + ((group * winograd::kPositions + a * 4) * gw + ci) * gwp;
        for (int64_t co = 0; co < gw; ++co) {
          const float t0 = ta[co], t1 = ta[gw + co], t2 = ta[2 * gw + co];
          out[co] = t0;
          out[gw * gwp + co] = 0.5f * (t0 + t1 + t2);
          out[2 * gw * gwp + co] = 0.5f * (t0 - t1 + t2);
          out[3 * gw * gwp + co] = t2;
        }
      }
    }
  });
  return packed;
}

namespace winograd {

// The output tiles of a batch, numbered sample by sample, row-major within a sample.
struct TileGrid {
  int64_t per_row, per_sample;
  struct Tile {
    int64_t n, row, col;
  };
  Tile at(int64_t index) const {
    const int64_t in_sample = index % per_sample;
    return {index / per_sample, in_sample / per_row, in_sample % per_row};
  }
};

// V[xi][t][ci] (rows of padded_width) for tiles first .. first + count of `grid`, channels of
// `group`.
inline void input_transform(const kernels::ConvGeometry& g, const float* x, const TileGrid& grid,
                            int64_t first, int64_t count, int64_t group, float* V) {
  const int64_t gw = g.in_c_per_group, gwp = padded_width(gw), stride_xi = count * gwp;
  const v16 zero = {};
  for (int64_t t = 0; t < count; ++t) {
    const auto [n, tile_row, tile_col] = grid.at(first + t);
    for (int64_t c = 0; c < gw; c += kLanes) {
      const int64_t lanes = std::min<int64_t>(kLanes, gw - c);
      v16 d[4][4];
      for (int r = 0; r < 4; ++r) {
        const int64_t hi = 2 * tile_row - 1 + r;
        for (int s = 0; s < 4; ++s) {
          const int64_t wi = 2 * tile_col - 1 + s;
          d[r][s] = (hi < 0 || hi >= g.in_h || wi < 0 || wi >= g.in_w)
                        ? zero
                        : load_n(x + kernels::nhwc_index(n, hi, wi, group * gw + c, g.in_h, g.in_w, g.in_c), lanes);
        }
      }
      v16 e[4][4];  // B^T d: rows
      for (int s = 0; s < 4; ++s) {
        e[0][s] = d[0][s] - d[2][s];
        e[1][s] = d[1][s] + d[2][s];
        e[2][s] = d[2][s] - d[1][s];
        e[3][s] = d[1][s] - d[3][s];
      }
      for (int r = 0; r < 4; ++r) {  // (B^T d) B: columns
        float* out = V + (r * 4) * stride_xi + t * gwp + c;
        store(out, e[r][0] - e[r][2]);
        store(out + stride_xi, e[r][1] + e[r][2]);
        store(out + 2 * stride_xi, e[r][2] - e[r][1]);
        store(out + 3 * stride_xi, e[r][1] - e[r][3]);
      }
    }
  }
}

// M[xi][t][co0 .. co0 + 16 COV) = sum over ci of V[xi][t0 + t][ci] U[xi][ci][co], for TB tiles.
template <int TB, int COV>
inline void gemm_block(const float* V, const float* U, int64_t tiles, int64_t gw, int64_t t0,
                       int nt, int64_t co0, float* M) {
  const int64_t gwp = padded_width(gw);
  for (int xi = 0; xi < kPositions; ++xi) {
    const float* v = V + xi * tiles * gwp + t0 * gwp;
    const float* u = U + xi * gw * gwp + co0;
    v16 acc[TB][COV] = {};
    for (int64_t ci = 0; ci < gw; ++ci) {
      v16 w[COV];
      for (int j = 0; j < COV; ++j) w[j] = load(u + ci * gwp + j * kLanes);
      for (int t = 0; t < TB; ++t) {
        const float s = v[(t < nt ? t : 0) * gwp + ci];
        for (int j = 0; j < COV; ++j) acc[t][j] += w[j] * s;
      }
    }
    for (int t = 0; t < TB; ++t)
      for (int j = 0; j < COV; ++j) store(M + (xi * TB + t) * COV * kLanes + j * kLanes, acc[t][j]);
  }
}

// Y = A^T M A (A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]) of TB tiles, + bias [+ residual] [ReLU].
template <int TB, int COV>
inline void output_transform_block(const kernels::ConvGeometry& g, const float* M, const float* bias,
                                   const float* residual, float* y, const TileGrid& grid, int64_t first,
                                   int nt, int64_t c0, int64_t c_end, bool relu) {
  const v16 zero = {};
  for (int t = 0; t < nt; ++t)
    for (int j = 0; j < COV; ++j) {
      const int64_t c = c0 + j * kLanes, lanes = std::min<int64_t>(kLanes, c_end - c);
      if (lanes <= 0) break;  // the group's padding
      const auto [n, tile_row, tile_col] = grid.at(first + t);
      v16 m[4][4];
      for (int xi = 0; xi < kPositions; ++xi) m[xi / 4][xi % 4] = load(M + (xi * TB + t) * COV * kLanes + j * kLanes);
      v16 s[2][4];
      for (int k = 0; k < 4; ++k) {
        s[0][k] = m[0][k] + m[1][k] + m[2][k];
        s[1][k] = m[1][k] - m[2][k] - m[3][k];
      }
      const v16 b = bias ? load_n(bias + c, lanes) : zero;
      for (int r = 0; r < 2; ++r) {
        const int64_t ho = 2 * tile_row + r;
        if (ho >= g.out_h) break;
        const v16 out[2] = {s[r][0] + s[r][1] + s[r][2] + b, s[r][1] - s[r][2] - s[r][3] + b};
        for (int q = 0; q < 2; ++q) {
          const int64_t wo = 2 * tile_col + q;
          if (wo >= g.out_w) break;
          const int64_t at = kernels::nhwc_index(n, ho, wo, c, g.out_h, g.out_w, g.out_c);
          v16 v = out[q];
          if (residual) v += load_n(residual + at, lanes);
          if (relu) v = v < zero ? zero : v;  // NaN stays NaN, as in torch.relu
          store_n(y + at, v, lanes);
        }
      }
    }
}

// Tiles first .. first + count of `grid` (count <= the V buffer's), one group.
template <int TB, int COV>
inline void tile_range(const kernels::ConvGeometry& g, const float* x, const float* U, const float* bias,
                       const float* residual, float* y, const TileGrid& grid, int64_t first,
                       int64_t count, int64_t group, float* V, float* M, bool relu) {
  const int64_t gw = g.in_c_per_group;
  input_transform(g, x, grid, first, count, group, V);
  for (int64_t t0 = 0; t0 < count; t0 += TB) {
    const int nt = static_cast<int>(std::min<int64_t>(TB, count - t0));
    for (int64_t co0 = 0; co0 < gw; co0 += COV * kLanes) {
      gemm_block<TB, COV>(V, U, count, gw, t0, nt, co0, M);
      output_transform_block<TB, COV>(g, M, bias, residual, y, grid, first + t0, nt, group * gw + co0,
                                      (group + 1) * gw, relu);
    }
  }
}

}  // namespace winograd

// y = act(conv(x, W) + bias [+ residual]) for a channels_last float x where winograd_applies(g);
// `packed` from pack_winograd_weight; bias (out_c values) and residual may be null (zero).
inline void grouped_conv_winograd(const kernels::ConvGeometry& g, const float* x, const float* packed,
                                  const float* bias, const float* residual, float* y, bool relu) {
  using namespace winograd;
  const int64_t gw = g.in_c_per_group, gwp = padded_width(gw);
  const TileGrid grid{(g.out_w + 1) / 2, (g.out_h + 1) / 2 * ((g.out_w + 1) / 2)};
  const int64_t tiles = g.batch * grid.per_sample;
  // Tasks: (group, chunk of tiles numbered across the batch, so that small images fill whole
  // blocks); tasks run group by group, so a thread's next task reuses the group's U (16 x G x G
  // floats, 256 KB for G = 64, in L2). A task is one register block of tiles (16 per group: two
  // blocks of 4), so the V it transforms (16 x tiles x G floats: 24 KB for 6 tiles of 64 per
  // group, 8 KB for 8 of 16) is still in L1 when its GEMMs read it; U is read once per block
  // either way. Against chunks of 24 tiles (V 96 KB for 64 per group, in L2), in one process,
  // interleaved, 21 rounds, 2-core Zen 4 VM, 2026-12-07: 16 per group 1.05-1.25x faster over
  // RegNetX-400MF's stride-1 shapes at batch 1 and 8 (two runs; blocks of 12 before); 48-128 per
  // group 0.99-1.14x (1.01-1.05x on most of RegNet's shapes, 1.08-1.16x where a batch-1 image
  // has few tiles: 1088 channels at 7px, 432 at 14px); 32 per group unchanged (1.00x).
  // Accumulators: TB tiles x COV vectors of 16 output channels (24 of the 32 vector registers
  // from 32 per group on).
  auto run = [&](auto tb, auto cov) {
    constexpr int TB = decltype(tb)::value, COV = decltype(cov)::value;
    const int64_t task_tiles = gwp == 16 ? 2 * TB : TB;
    const int64_t chunks = (tiles + task_tiles - 1) / task_tiles, chunk_tiles = (tiles + chunks - 1) / chunks;
    at::parallel_for(0, g.groups * chunks, 1, [&](int64_t task0, int64_t task1) {
      std::vector<float> V(kPositions * chunk_tiles * gwp), M(kPositions * TB * COV * kLanes);
      for (int64_t task = task0; task < task1; ++task) {
        const int64_t group = task / chunks, first = (task % chunks) * chunk_tiles;
        const int64_t count = std::min(chunk_tiles, tiles - first);
        if (count > 0)
          tile_range<TB, COV>(g, x, packed + group * kPositions * gw * gwp, bias, residual, y, grid, first,
                              count, group, V.data(), M.data(), relu);
      }
    });
  };
  switch (gwp) {
    case 16: run(std::integral_constant<int, 4>{}, std::integral_constant<int, 1>{}); break;
    case 32: run(std::integral_constant<int, 12>{}, std::integral_constant<int, 2>{}); break;
    case 48: run(std::integral_constant<int, 8>{}, std::integral_constant<int, 3>{}); break;
    default: run(std::integral_constant<int, 6>{}, std::integral_constant<int, 4>{}); break;
  }
}

}  // namespace regnet_ext::cpu
