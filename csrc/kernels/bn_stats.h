// BatchNorm arithmetic shared by the CPU and CUDA conv_bn_act: per-channel statistics
// (Welford tiles merged with Chan's formula), the eval-mode fold, the affine apply, the
// running-statistics update of nn.BatchNorm2d, and the backward formulas of batch statistics.
#pragma once

#include <math.h>

#include "kernels/common.h"

namespace regnet_ext::kernels {

// Mean and sum of squared deviations of `count` values: merging two of these is exact
// (Chan et al.), so tiles, threads and CUDA blocks can be combined in any tree order.
template <typename A>
struct MomentStats {
  A count;
  A mean;
  A m2;
};

template <typename A>
REGNET_HD MomentStats<A> moment_stats_empty() {
  return MomentStats<A>{A(0), A(0), A(0)};
}

// Welford's update with one value.
template <typename A>
REGNET_HD void welford_push(MomentStats<A>& s, A v) {
  s.count += A(1);
  const A delta = v - s.mean;
  s.mean += delta / s.count;
  s.m2 += delta * (v - s.mean);
}

// Chan's parallel merge: s <- s ∪ other.
template <typename A>
REGNET_HD void chan_merge(MomentStats<A>& s, const MomentStats<A>& other) {
  if (other.count == A(0)) return;
  if (s.count == A(0)) {
    s = other;
    return;
  }
  const A n = s.count + other.count;
  const A delta = other.mean - s.mean;
  const A w = other.count / n;
  s.mean += delta * w;
  s.m2 += other.m2 + delta * delta * s.count * w;
  s.count = n;
}

// Statistics of a small tile held in registers: mean first, then squared deviations from it,
// which keeps the tile's m2 free of the cancellation of sum(x^2) - n*mean^2.
template <typename A>
REGNET_HD MomentStats<A> tile_moments(const A* values, int count, int stride) {
  A sum = A(0);
  for (int i = 0; i < count; ++i) sum += values[i * stride];
  const A mean = sum / A(count);
  A m2 = A(0);
  for (int i = 0; i < count; ++i) {
    const A d = values[i * stride] - mean;
    m2 += d * d;
  }
  return MomentStats<A>{A(count), mean, m2};
}

// Batch statistics used to normalise: biased variance (m2 / count).
template <typename A>
REGNET_HD A biased_variance(const MomentStats<A>& s) {
  return s.count > A(0) ? s.m2 / s.count : A(0);
}

template <typename A>
REGNET_HD A inv_std(A variance, A eps) {
  return A(1) / sqrt(variance + eps);
}

// y = gamma * (z - mean) * invstd + beta  ==  z * scale + shift.
template <typename A>
struct ChannelAffine {
  A scale;
  A shift;
};

template <typename A>
REGNET_HD ChannelAffine<A> bn_affine(A gamma, A beta, A mean, A invstd) {
  const A scale = gamma * invstd;
  return ChannelAffine<A>{scale, beta - mean * scale};
}

// Eval-mode fold into the conv: W' = W * scale, b' = beta + (b - mean) * scale.
template <typename A>
REGNET_HD ChannelAffine<A> bn_fold(A gamma, A beta, A running_mean, A running_var, A eps,
                                   A conv_bias) {
  const A scale = gamma * inv_std(running_var, eps);
  return ChannelAffine<A>{scale, beta + (conv_bias - running_mean) * scale};
}

template <typename A>
REGNET_HD A bn_apply(A z, ChannelAffine<A> affine) {
  return z * affine.scale + affine.shift;
}

// nn.BatchNorm2d's running update: the unbiased variance (count / (count - 1)) goes into
// running_var; factor is momentum, or 1/num_batches_tracked when momentum is None.
template <typename A>
REGNET_HD void running_stat_update(A& running_mean, A& running_var, A batch_mean,
                                   A batch_biased_var, A count, A factor) {
  const A unbiased = count > A(1) ? batch_biased_var * count / (count - A(1)) : batch_biased_var;
  running_mean = (A(1) - factor) * running_mean + factor * batch_mean;
  running_var = (A(1) - factor) * running_var + factor * unbiased;
}

// ---- backward -----------------------------------------------------------------------------

// Per-channel sums the batch-statistics backward needs: sum(g) and sum(g * xhat).
template <typename A>
struct BnGradSums {
  A sum_g;
  A sum_g_xhat;
};

template <typename A>
REGNET_HD void bn_grad_sums_merge(BnGradSums<A>& s, const BnGradSums<A>& other) {
  s.sum_g += other.sum_g;
  s.sum_g_xhat += other.sum_g_xhat;
}

template <typename A>
REGNET_HD A normalized(A z, A mean, A invstd) {
  return (z - mean) * invstd;
}

// d loss / d z for batch statistics over `count` values per channel:
// gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)).
template <typename A>
REGNET_HD A bn_train_input_grad(A g, A xhat, A scale, A mean_g, A mean_g_xhat) {
  return scale * (g - mean_g - xhat * mean_g_xhat);
}

// With batch statistics the conv bias cancels in z - mean(z): its gradient is exactly zero
// (summing dz would only add rounding noise).
template <typename A>
REGNET_HD A bn_train_conv_bias_grad() {
  return A(0);
}

// Eval mode differentiates the fold: with raw = d loss / d W' (the folded weight's gradient
// before scaling) summed against W over the channel's weights (`raw_dot_w`) and sum_g = sum of
// the output gradient, d gamma = invstd * (raw_dot_w + sum_g * (b - running_mean)).
template <typename A>
REGNET_HD A bn_fold_gamma_grad(A raw_dot_w, A sum_g, A conv_bias, A running_mean, A invstd) {
  return invstd * (raw_dot_w + sum_g * (conv_bias - running_mean));
}

}  // namespace regnet_ext::kernels
