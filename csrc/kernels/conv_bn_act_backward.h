// Backward arithmetic of conv_bn_act, shared by the CPU implementation and the CUDA kernels.
//
// With pre = BN(z) + residual, y = act(pre), z = conv(x, W) + b:
//   g        = dy masked by y > 0 (ReLU) -- also the residual's gradient
//   training: dz = gamma*invstd*(g - mean(g) - xhat*mean(g*xhat)); dgamma = sum(g*xhat); dbeta = sum(g)
//   eval:     the conv ran with folded weights W' = W*scale, so dx = conv_input_grad(g, W') and
//             dW = conv_weight_grad(x, g) * scale (gamma's gradient in bn_fold_gamma_grad)
//   dx[n][hi][wi][ci] = sum over (kh, kw, co of ci's group) with hi = ho*s - p + kh, wi = wo*s - p + kw
//                       of dz[n][ho][wo][co] * W[co][ci][kh][kw]
//   dW[co][ci][kh][kw] = sum over (n, ho, wo) of dz[n][ho][wo][co] * x[n][hi][wi][ci]
//   db[co]             = sum over (n, ho, wo) of dz[n][ho][wo][co]
//
// Layouts as in conv_bn_act.h. The input-gradient tile uses the transposed packing
// [groups][K][K][C_out/groups][C_in/groups] (conv_pack_transposed_index): input channels innermost.
#pragma once

#include "kernels/bn_stats.h"
#include "kernels/common.h"
#include "kernels/conv_bn_act.h"

namespace regnet_ext::kernels {

// ReLU's gradient from its output: y > 0 exactly where the pre-activation was positive.
template <typename A>
REGNET_HD A relu_grad(A dy, A y, bool relu) {
  return relu ? (y > A{} ? dy : A{}) : dy;  // scalar or compiler vector of lanes
}

REGNET_HD int64_t conv_pack_transposed_index(const ConvGeometry& g, int64_t co, int64_t ci,
                                             int64_t kh, int64_t kw) {
  const int64_t group = co / g.out_c_per_group;
  const int64_t co_in_group = co % g.out_c_per_group;
  return (((group * g.kernel + kh) * g.kernel + kw) * g.out_c_per_group + co_in_group) *
             g.in_c_per_group + ci;
}

// One input-gradient value dx[n][hi][wi][ci_global] from the PyTorch-layout weight: the
// reference schedule (one thread per input element on a GPU).
template <typename T, typename W>
REGNET_HD acc_t<T> conv_input_grad_point(const ConvGeometry& g, const T* dz, const W* weight,
                                         int64_t n, int64_t hi, int64_t wi, int64_t ci_global) {
  using A = acc_t<T>;
  const int64_t group = ci_global / g.in_c_per_group;
  const int64_t ci = ci_global % g.in_c_per_group;
  const int64_t co0 = group * g.out_c_per_group;
  A acc = A(0);
  for (int64_t kh = 0; kh < g.kernel; ++kh) {
    const int64_t th = hi + g.padding - kh;
    if (th < 0 || th % g.stride != 0) continue;
    const int64_t ho = th / g.stride;
    if (ho >= g.out_h) continue;
    for (int64_t kw = 0; kw < g.kernel; ++kw) {
      const int64_t tw = wi + g.padding - kw;
      if (tw < 0 || tw % g.stride != 0) continue;
      const int64_t wo = tw / g.stride;
      if (wo >= g.out_w) continue;
      const T* dzp = dz + nhwc_index(n, ho, wo, co0, g.out_h, g.out_w, g.out_c);
      for (int64_t co = 0; co < g.out_c_per_group; ++co)
        acc += load_acc(dzp[co]) *
               static_cast<A>(weight[(((co0 + co) * g.in_c_per_group + ci) * g.kernel + kh) *
                                         g.kernel + kw]);
    }
  }
  return acc;
}

// Input-gradient register tile: PW input pixels of row hi taken `stride` apart
// (wi0, wi0 + stride, ...), so that for a given kw either all of them or none meet an output
// pixel, times one lane of input channels (ci0.. inside `group`). `packed_t` is the transposed
// packing. Lanes as in conv_tile.
template <int PW, typename V, typename T, typename A>
REGNET_HD void conv_input_grad_tile(const ConvGeometry& g, const T* dz, const A* packed_t,
                                    const T* zeros, int64_t n, int64_t hi, int64_t wi0, int npix,
                                    int64_t group, int64_t ci0, V (&out)[PW]) {
  V acc[PW];  // locals, as in conv_tile
  REGNET_UNROLL
  for (int p = 0; p < PW; ++p) acc[p] = V{};
  const int64_t cig = g.in_c_per_group;
  const int64_t cog = g.out_c_per_group;
  for (int64_t kh = 0; kh < g.kernel; ++kh) {
    const int64_t th = hi + g.padding - kh;
    if (th < 0 || th % g.stride != 0 || th / g.stride >= g.out_h) continue;
    const int64_t ho = th / g.stride;
    const T* row = dz + nhwc_index(n, ho, 0, group * cog, g.out_h, g.out_w, g.out_c);
    for (int64_t kw = 0; kw < g.kernel; ++kw) {
      const int64_t tw0 = wi0 + g.padding - kw;
      // tw0 + p*stride keeps tw0's residue, so divisibility is decided once for the tile.
      if (((tw0 % g.stride) + g.stride) % g.stride != 0) continue;
      const T* src[PW];
      REGNET_UNROLL
      for (int p = 0; p < PW; ++p) {
        const int64_t tw = tw0 + p * g.stride;
        const int64_t wo = tw >= 0 ? tw / g.stride : -1;
        src[p] = (p < npix && tw >= 0 && wo < g.out_w) ? row + wo * g.out_c : zeros;
      }
      const A* wk = packed_t + ((group * g.kernel + kh) * g.kernel + kw) * cog * cig + ci0;
      lane_tile_step<PW>(src, wk, cog, cig, acc);
    }
  }
  for (int p = 0; p < PW; ++p) out[p] = acc[p];
}

// Weight-gradient register tile for one (group, kh, kw): acc[i] (one lane of output channels
// co0.. of the group, for input channel ci0 + i) += sum over the output pixels
// wo0..wo0+npix-1 of row (n, ho) of x[n][hi][wi][ci0 + i] * dz[n][ho][wo][co]. Accumulates
// into acc (not cleared), so a caller can stream many rows through one tile.
template <int CIB, typename V, typename T>
REGNET_HD void conv_weight_grad_tile(const ConvGeometry& g, const T* x, const T* dz, int64_t n,
                                     int64_t ho, int64_t wo0, int64_t npix, int64_t group,
                                     int64_t kh, int64_t kw, int64_t ci0, int64_t co0,
                                     V (&out)[CIB]) {
  const int64_t hi = ho * g.stride - g.padding + kh;
  if (hi < 0 || hi >= g.in_h) return;
  V acc[CIB];  // locals, as in conv_tile
  REGNET_UNROLL
  for (int i = 0; i < CIB; ++i) acc[i] = out[i];
  // Output pixels whose input column is inside the image: wo in [wo_lo, wo_hi).
  int64_t wo_lo = wo0, wo_hi = wo0 + npix;
  while (wo_lo < wo_hi && wo_lo * g.stride - g.padding + kw < 0) ++wo_lo;
  while (wo_hi > wo_lo && (wo_hi - 1) * g.stride - g.padding + kw >= g.in_w) --wo_hi;
  const T* xrow = x + nhwc_index(n, hi, 0, group * g.in_c_per_group + ci0, g.in_h, g.in_w, g.in_c);
  const T* dzrow = dz + nhwc_index(n, ho, 0, group * g.out_c_per_group + co0, g.out_h, g.out_w,
                                   g.out_c);
  for (int64_t wo = wo_lo; wo < wo_hi; ++wo) {
    const T* xp = xrow + (wo * g.stride - g.padding + kw) * g.in_c;
    const V dv = lane_load<V>(dzrow + wo * g.out_c);
    REGNET_UNROLL
    for (int i = 0; i < CIB; ++i) acc[i] += dv * load_acc(xp[i]);
  }
  REGNET_UNROLL
  for (int i = 0; i < CIB; ++i) out[i] = acc[i];
}

}  // namespace regnet_ext::kernels
