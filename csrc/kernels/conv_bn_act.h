// Forward arithmetic of conv_bn_act, shared by the CPU implementation and the CUDA kernels:
// the conv geometry, one output point, a register tile of pixels x output channels, and the
// epilogue (BN affine, residual, ReLU).
//
// Layouts (every kernel works in channels_last):
//   x          [N, H, W, C_in]                      dense NHWC
//   y, z, res  [N, H_out, W_out, C_out]             dense NHWC
//   packed W   [groups][K][K][C_in/groups][C_out/groups]   (conv_pack_index below)
// Packing puts a group's output channels innermost, so a tile's inner loop is one contiguous
// run of weights per input channel: a SIMD load on the CPU, a coalesced/shared load on the GPU.
//
// T is the stored element type (float, double, or a 16-bit float convertible with static_cast);
// A = acc_t<T> is the accumulation type; weights are packed in A.
#pragma once

#include <string.h>

#include "kernels/bn_stats.h"
#include "kernels/common.h"

namespace regnet_ext::kernels {

struct ConvGeometry {
  int64_t batch, in_h, in_w, in_c;
  int64_t out_h, out_w, out_c;
  int64_t kernel, stride, padding, groups;
  int64_t in_c_per_group, out_c_per_group;
};

REGNET_HD int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding) {
  return (in + 2 * padding - kernel) / stride + 1;
}

REGNET_HD ConvGeometry make_conv_geometry(int64_t batch, int64_t in_h, int64_t in_w, int64_t in_c,
                                          int64_t out_c, int64_t kernel, int64_t stride,
                                          int64_t padding, int64_t groups) {
  ConvGeometry g;
  g.batch = batch;
  g.in_h = in_h;
  g.in_w = in_w;
  g.in_c = in_c;
  g.out_c = out_c;
  g.kernel = kernel;
  g.stride = stride;
  g.padding = padding;
  g.groups = groups;
  g.out_h = conv_out_size(in_h, kernel, stride, padding);
  g.out_w = conv_out_size(in_w, kernel, stride, padding);
  g.in_c_per_group = in_c / groups;
  g.out_c_per_group = out_c / groups;
  return g;
}

REGNET_HD int64_t nhwc_index(int64_t n, int64_t h, int64_t w, int64_t c, int64_t H, int64_t W,
                             int64_t C) {
  return ((n * H + h) * W + w) * C + c;
}

// Position of PyTorch's weight[co][ci][kh][kw] (co global, ci within the group) in the packing.
REGNET_HD int64_t conv_pack_index(const ConvGeometry& g, int64_t co, int64_t ci, int64_t kh,
                                  int64_t kw) {
  const int64_t group = co / g.out_c_per_group;
  const int64_t co_in_group = co % g.out_c_per_group;
  return (((group * g.kernel + kh) * g.kernel + kw) * g.in_c_per_group + ci) * g.out_c_per_group +
         co_in_group;
}

template <typename T>
REGNET_HD acc_t<T> load_acc(const T& v) {
  return static_cast<acc_t<T>>(v);
}

template <typename T, typename A>
REGNET_HD T store_as(A v) {
  return static_cast<T>(v);
}

// One output value y[n][ho][wo][co] of the plain conv (no bias), from the PyTorch-layout weight
// [C_out][C_in/groups][K][K]: the reference schedule (one thread per output on a GPU).
template <typename T, typename W>
REGNET_HD acc_t<T> conv_point(const ConvGeometry& g, const T* x, const W* weight, int64_t n,
                              int64_t ho, int64_t wo, int64_t co) {
  using A = acc_t<T>;
  const int64_t ci0 = (co / g.out_c_per_group) * g.in_c_per_group;
  A acc = A(0);
  for (int64_t kh = 0; kh < g.kernel; ++kh) {
    const int64_t hi = ho * g.stride - g.padding + kh;
    if (hi < 0 || hi >= g.in_h) continue;
    for (int64_t kw = 0; kw < g.kernel; ++kw) {
      const int64_t wi = wo * g.stride - g.padding + kw;
      if (wi < 0 || wi >= g.in_w) continue;
      const T* xp = x + nhwc_index(n, hi, wi, ci0, g.in_h, g.in_w, g.in_c);
      const W* wp = weight + ((co * g.in_c_per_group) * g.kernel + kh) * g.kernel + kw;
      for (int64_t ci = 0; ci < g.in_c_per_group; ++ci)
        acc += load_acc(xp[ci]) * static_cast<A>(wp[ci * g.kernel * g.kernel]);
    }
  }
  return acc;
}

// ---- lanes ---------------------------------------------------------------------------------
// A register tile holds a block of channels as one "lane" value V: the accumulation scalar A
// itself (one channel, as a CUDA thread does) or a SIMD vector of A with +, * and scalar
// broadcast (the CPU passes a compiler vector type). lane_width<V, A> channels per lane.
template <typename V, typename A>
constexpr int lane_width = static_cast<int>(sizeof(V) / sizeof(A));

// Lanes from `width` consecutive values of type T (converted to A).
template <typename V, typename T>
REGNET_HD V lane_load(const T* p) {
  using A = acc_t<T>;
  A tmp[lane_width<V, A>];
  for (int i = 0; i < lane_width<V, A>; ++i) tmp[i] = load_acc(p[i]);
  V v;
  memcpy(&v, tmp, sizeof(V));
  return v;
}

// Lanes from values already in the accumulation type.
template <typename V, typename A>
REGNET_HD V lane_load_acc(const A* p) {
  V v;
  memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename A>
REGNET_HD void lane_store_acc(A* p, const V& v) {
  memcpy(p, &v, sizeof(V));
}

// Lanes stored as `width` consecutive values of type T (converted from A).
template <typename T, typename V>
REGNET_HD void lane_store(T* p, const V& v) {
  using A = acc_t<T>;
  A tmp[lane_width<V, A>];
  memcpy(tmp, &v, sizeof(V));
  for (int i = 0; i < lane_width<V, A>; ++i) p[i] = store_as<T>(tmp[i]);
}

// acc[p] += sum over j < depth of weights[j * weight_stride] (one lane) * src[p][j]: the inner
// product of a tile. Eight weight lanes stay in registers while every pixel's eight inputs are
// read through one pointer, so the loop is FMA-bound rather than bound by address reloads.
template <int PW, typename V, typename T, typename A>
REGNET_HD void lane_tile_step(const T* const (&src)[PW], const A* weights, int64_t depth,
                              int64_t weight_stride, V (&acc)[PW]) {
  constexpr int kUnroll = 8;
  int64_t j0 = 0;
  for (; j0 + kUnroll <= depth; j0 += kUnroll) {
    V w[kUnroll];
    REGNET_UNROLL
    for (int j = 0; j < kUnroll; ++j) w[j] = lane_load_acc<V>(weights + (j0 + j) * weight_stride);
    REGNET_UNROLL
    for (int p = 0; p < PW; ++p) {
      const T* s = src[p] + j0;
      REGNET_UNROLL
      for (int j = 0; j < kUnroll; ++j) acc[p] += w[j] * load_acc(s[j]);
    }
  }
  for (; j0 < depth; ++j0) {
    const V w = lane_load_acc<V>(weights + j0 * weight_stride);
    REGNET_UNROLL
    for (int p = 0; p < PW; ++p) acc[p] += w * load_acc(src[p][j0]);
  }
}

// Register tile: PW consecutive output pixels (wo0 .. wo0+npix-1 of row ho) times one lane of
// output channels (co0 .. inside `group`), accumulated over the whole K x K x C_in/groups
// window from the packed weights. Pixels whose window falls outside the image read `zeros`
// (C_in/groups zeros of type T), which keeps the inner loop free of branches.
template <int PW, typename V, typename T, typename A>
REGNET_HD void conv_tile(const ConvGeometry& g, const T* x, const A* packed, const T* zeros,
                         int64_t n, int64_t ho, int64_t wo0, int npix, int64_t group, int64_t co0,
                         V (&out)[PW]) {
  // Accumulate in locals: `out` may alias the inputs as far as the compiler knows, which would
  // force a store per FMA when the call is not inlined.
  V acc[PW];
  REGNET_UNROLL
  for (int p = 0; p < PW; ++p) acc[p] = V{};
  const int64_t cig = g.in_c_per_group;
  const int64_t cog = g.out_c_per_group;
  for (int64_t kh = 0; kh < g.kernel; ++kh) {
    const int64_t hi = ho * g.stride - g.padding + kh;
    if (hi < 0 || hi >= g.in_h) continue;
    const T* row = x + nhwc_index(n, hi, 0, group * cig, g.in_h, g.in_w, g.in_c);
    for (int64_t kw = 0; kw < g.kernel; ++kw) {
      const T* src[PW];
      REGNET_UNROLL
      for (int p = 0; p < PW; ++p) {
        const int64_t wi = (wo0 + p) * g.stride - g.padding + kw;
        src[p] = (p < npix && wi >= 0 && wi < g.in_w) ? row + wi * g.in_c : zeros;
      }
      const A* wk = packed + ((group * g.kernel + kh) * g.kernel + kw) * cig * cog + co0;
      lane_tile_step<PW>(src, wk, cig, cog, acc);
    }
  }
  REGNET_UNROLL
  for (int p = 0; p < PW; ++p) out[p] = acc[p];
}

// Epilogue of one output value: BN affine (folded or batch), residual, ReLU.
// A is a scalar or, on the CPU, a compiler vector of lanes (A{} is zero in every lane).
template <typename A>
REGNET_HD A conv_epilogue(A conv, ChannelAffine<A> affine, A residual, bool relu) {
  const A v = bn_apply(conv, affine) + residual;
  return relu ? (v < A{} ? A{} : v) : v;  // NaN passes through, as in torch.relu
}

}  // namespace regnet_ext::kernels
