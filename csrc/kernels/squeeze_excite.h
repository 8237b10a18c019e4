// Squeeze-and-excitation math, shared by the CPU implementation and the CUDA kernels.
//
// Per sample n (x is [C, P] with P = H*W pixels):
//   s = mean_p(x)                 squeeze (pooled channel means)
//   z = relu(W1 s + b1)           hidden, C_se wide
//   g = sigmoid(W2 z + b2)        gate, C wide
//   y = x * g                     excite
// Backward, given dy:
//   dg = sum_p(dy * x), dpre2 = dg * g (1 - g), dW2 = dpre2 z^T, db2 = dpre2,
//   dz = (W2^T dpre2) masked by z > 0, dW1 = dz s^T, db1 = dz, ds = W1^T dz,
//   dx = dy * g + ds / P.
//
// Everything here is plain C++ over raw pointers: T is the stored element type (float, double,
// or a 16-bit float type convertible with static_cast), A its accumulation type (acc_t<T>). The
// MLP works on weights already converted to A (the caller converts them once per call).
#pragma once

#include <math.h>

#include "kernels/common.h"

namespace regnet_ext::kernels {

// ---- per-element formulas ------------------------------------------------------------------
// V is a scalar of type A or a SIMD vector of A (the CPU passes at::vec::Vectorized), so the
// vectorised CPU loops and the CUDA threads run the very same expressions.

template <typename V>
REGNET_HD V se_pool_step(V acc, V x) {
  return acc + x;
}

template <typename V>
REGNET_HD V se_scale(V x, V gate) {
  return x * gate;
}

// One pixel's contribution to dg = sum_p(dy * x).
template <typename V>
REGNET_HD V se_gate_grad_step(V acc, V dy, V x) {
  return acc + dy * x;
}

// dx = dy * g + ds / P; `ds_mean` is ds already divided by P.
template <typename V>
REGNET_HD V se_input_grad(V dy, V gate, V ds_mean) {
  return dy * gate + ds_mean;
}

template <typename A>
REGNET_HD A se_relu(A v) {
  return v > A(0) ? v : A(0);
}

REGNET_HD float se_exp(float v) { return expf(v); }
REGNET_HD double se_exp(double v) { return exp(v); }

// 1 / (1 + e^-v): for very negative v, e^-v overflows to inf and the result is exactly 0.
template <typename A>
REGNET_HD A se_sigmoid(A v) {
  return A(1) / (A(1) + se_exp(-v));
}

// d sigmoid / d pre-activation, written in terms of the sigmoid's output.
template <typename A>
REGNET_HD A se_sigmoid_grad(A dgate, A gate) {
  return dgate * gate * (A(1) - gate);
}

// ---- squeeze: pooling as partial sums -------------------------------------------------------
// A worker (CPU task, CUDA block) sums a range of pixels into its own partial row; partial rows
// are then merged and divided by P. Strides are in elements: (pixel, channel) = (C, 1) for
// channels_last, (1, P) for NCHW.

template <typename T, typename A>
REGNET_HD void se_pool_partial(const T* x, int64_t pixel_stride, int64_t channel_stride,
                               int64_t pixel_begin, int64_t pixel_end, int64_t channels,
                               A* partial) {
  for (int64_t c = 0; c < channels; ++c) {
    A acc = A(0);
    const T* xc = x + c * channel_stride;
    for (int64_t p = pixel_begin; p < pixel_end; ++p) {
      acc = se_pool_step(acc, static_cast<A>(xc[p * pixel_stride]));
    }
    partial[c] = se_pool_step(partial[c], acc);
  }
}

// Backward's pass over (x, dy): the same partial-sum scheme for s and dg at once, so the
// backward re-derives the pooled means without another read of x.
template <typename T, typename A>
REGNET_HD void se_pool_and_gate_grad_partial(const T* x, const T* dy, int64_t pixel_stride,
                                             int64_t channel_stride, int64_t pixel_begin,
                                             int64_t pixel_end, int64_t channels, A* pool_partial,
                                             A* dgate_partial) {
  for (int64_t c = 0; c < channels; ++c) {
    A pool = A(0), dgate = A(0);
    for (int64_t p = pixel_begin; p < pixel_end; ++p) {
      const int64_t i = c * channel_stride + p * pixel_stride;
      const A xv = static_cast<A>(x[i]);
      pool = se_pool_step(pool, xv);
      dgate = se_gate_grad_step(dgate, static_cast<A>(dy[i]), xv);
    }
    pool_partial[c] = se_pool_step(pool_partial[c], pool);
    dgate_partial[c] = se_pool_step(dgate_partial[c], dgate);
  }
}

// out[c] = sum over `count` partial rows (`row_stride` apart) of partial[k][c], times `scale`.
template <typename A>
REGNET_HD void se_merge_partials(const A* partials, int64_t count, int64_t channels, int64_t row_stride,
                                 A scale, A* out) {
  for (int64_t c = 0; c < channels; ++c) {
    A acc = A(0);
    for (int64_t k = 0; k < count; ++k) acc = se_pool_step(acc, partials[k * row_stride + c]);
    out[c] = acc * scale;
  }
}

// ---- excitation MLP -------------------------------------------------------------------------

// Plain dot product: the contract of the Dot the units below take (CUDA passes a warp-wide one;
// the CPU computes eight rows' dot products at a time, cpu/squeeze_excite.cpp, and takes the
// units from them through se_hidden_from_dot / se_gate_from_dot).
struct SeScalarDot {
  template <typename A>
  REGNET_HD A operator()(const A* a, const A* b, int64_t n) const {
    A acc = A(0);
    for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
    return acc;
  }
};

// A hidden unit and a gate from their dot products (W1[j, :] . s and W2[c, :] . z).
template <typename A>
REGNET_HD A se_hidden_from_dot(A dot, A b1) {
  return se_relu(dot + b1);
}
template <typename A>
REGNET_HD A se_gate_from_dot(A dot, A b2) {
  return se_sigmoid(dot + b2);
}

// One hidden unit: z[j] = relu(W1[j, :] . s + b1[j]); w1_row is row j of the [C_se, C] weight.
template <typename A, typename Dot>
REGNET_HD A se_hidden_unit(const A* w1_row, A b1, const A* s, int64_t channels, Dot dot) {
  return se_hidden_from_dot(dot(w1_row, s, channels), b1);
}

// One gate: g[c] = sigmoid(W2[c, :] . z + b2[c]); w2_row is row c of the [C, C_se] weight.
template <typename A, typename Dot>
REGNET_HD A se_gate_unit(const A* w2_row, A b2, const A* z, int64_t hidden, Dot dot) {
  return se_gate_from_dot(dot(w2_row, z, hidden), b2);
}

// A hidden unit's gradient through its ReLU from dL/dz and z itself:
// relu'(pre1) = [pre1 > 0] = [z > 0], since z = relu(pre1).
template <typename A>
REGNET_HD A se_hidden_grad(A dz, A z) {
  return z > A(0) ? dz : A(0);
}

// One sample's MLP backward: from dg (C) to dpre2 (C), dz (C_se) and ds / P (C).
// The transposed products are written as row-wise axpy updates so that they read W1 and W2 in
// their stored order and vectorise without reassociating a reduction.
template <typename A>
REGNET_HD void se_excite_backward(const A* w1, const A* w2, const A* z, const A* gate,
                                  const A* dgate, int64_t channels, int64_t hidden,
                                  A inv_pixels, A* dpre2, A* dz, A* ds_mean) {
  for (int64_t c = 0; c < channels; ++c) dpre2[c] = se_sigmoid_grad(dgate[c], gate[c]);
  for (int64_t j = 0; j < hidden; ++j) dz[j] = A(0);
  for (int64_t c = 0; c < channels; ++c) {
    const A d = dpre2[c];
    const A* row = w2 + c * hidden;
    for (int64_t j = 0; j < hidden; ++j) dz[j] += row[j] * d;
  }
  for (int64_t j = 0; j < hidden; ++j) dz[j] = se_hidden_grad(dz[j], z[j]);
  for (int64_t c = 0; c < channels; ++c) ds_mean[c] = A(0);
  for (int64_t j = 0; j < hidden; ++j) {
    const A d = dz[j];
    const A* row = w1 + j * channels;
    for (int64_t c = 0; c < channels; ++c) ds_mean[c] += row[c] * d;
  }
  for (int64_t c = 0; c < channels; ++c) ds_mean[c] *= inv_pixels;
}

}  // namespace regnet_ext::kernels
