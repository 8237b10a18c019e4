// Classifier-head math: global average pool, then a linear layer.
//
//   s[n, c] = (1/P) sum_p x[n, p, c]          pooled channel means (P = H*W pixels)
//   y[n, k] = b[k] + sum_c W[k, c] s[n, c]    logits
//
// V is a scalar of the accumulation type A or a SIMD vector of it (the CPU passes
// at::vec::Vectorized), so the vectorised CPU loops and a scalar reference run the same
// expressions. The pooling sums with squeeze_excite's se_pool_step.
#pragma once

#include "kernels/common.h"
#include "kernels/squeeze_excite.h"

namespace regnet_ext::kernels {

template <typename V>
REGNET_HD V pool_linear_dot_step(V acc, V weight, V pooled) {
  return acc + weight * pooled;
}

// One logit from one sample's pooled means (the scalar form of the CPU's SIMD loop).
template <typename A>
REGNET_HD A pool_linear_logit(const A* weight_row, const A* pooled, int64_t channels, A bias) {
  A acc = A(0);
  for (int64_t c = 0; c < channels; ++c) acc = pool_linear_dot_step(acc, weight_row[c], pooled[c]);
  return acc + bias;
}

}  // namespace regnet_ext::kernels
