// Classifier-head math: global average pool, then a linear layer.
//
//   s[n, c] = (1/P) sum_p x[n, p, c]          pooled channel means (P = H*W pixels)
//   y[n, k] = b[k] + sum_c W[k, c] s[n, c]    logits
//
// V is a scalar or a SIMD vector (the CPU passes at::vec::Vectorized). The pooling sums with
// squeeze_excite.h's se_pool_step (the CPU through cpu/channel_sums.h); every product of the head
// and of its backward (dy W, dy^T s) accumulates with pool_linear_dot_step.
#pragma once

#include "kernels/common.h"

namespace regnet_ext::kernels {

// acc + a * b: one term of a logit (W[k, c] s[n, c]) or of a gradient (dy[n, k] W[k, c] or
// dy[n, k] s[n, c]).
template <typename V>
REGNET_HD V pool_linear_dot_step(V acc, V a, V b) {
  return acc + a * b;
}

}  // namespace regnet_ext::kernels
