// Host-side input checks shared by every backend's operator implementations: each failure is a
// c10::Error (RuntimeError in Python) that names the operator, the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <c10/util/safe_numerics.h>

#include <array>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/conv_bn_act.h"

namespace regnet_ext::checks {

inline void check_like(const char* op, const at::Tensor& ref, const char* ref_name,
                       const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the same device as ",
              ref_name, " (", ref.device(), "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_rank(const char* op, const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", t.sizes());
}

inline void check_vector(const char* op, const at::Tensor& t, int64_t length, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == length, op, ": ", name, " must have shape [", length,
              "], got ", t.sizes());
}

inline void check_shape(const char* op, const at::Tensor& t, at::IntArrayRef shape,
                        const char* name) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

inline void check_floating(const char* op, const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kBFloat16 || s == at::kHalf, op,
              ": ", name, " must be float32, float64, bfloat16 or float16, got ", s);
}

// BN's epsilon: stock batch_norm refuses a negative one; a NaN (which no comparison refuses
// further down) would turn every output into NaN, or into 0 behind the ReLU.
inline void check_eps(const char* op, double eps) {
  TORCH_CHECK(eps >= 0, op, ": eps must be a non-negative number, got ", eps);
}

// ---- conv_bn_act ----------------------------------------------------------------------------

// Validates the conv and BN arguments shared by conv_bn_act's forward and backward operators
// and returns the geometry. `bias` and `residual` may be undefined tensors.
inline kernels::ConvGeometry check_conv_bn_act(const char* op, const at::Tensor& x,
                                               const at::Tensor& weight, const at::Tensor& bias,
                                               const at::Tensor& bn_weight,
                                               const at::Tensor& bn_bias,
                                               const at::Tensor& residual, int64_t stride,
                                               int64_t padding, int64_t groups) {
  check_floating(op, x, "x");
  check_rank(op, x, 4, "x (N, C, H, W)");
  check_rank(op, weight, 4, "weight (C_out, C_in/groups, K, K)");
  check_like(op, x, "x", weight, "weight");
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding >= 0, op, ": padding must be >= 0, got ", padding);
  // Keeps x.size + 2 * padding from overflowing (the output's element count is checked below).
  TORCH_CHECK(padding <= std::numeric_limits<int32_t>::max(), op, ": padding must be at most 2^31 - 1, got ",
              padding);
  const int64_t c_in = x.size(1), c_out = weight.size(0), k = weight.size(2);
  TORCH_CHECK(c_in % groups == 0, op, ": x's channels (", c_in, ") must be divisible by groups (",
              groups, ")");
  TORCH_CHECK(c_out % groups == 0, op, ": weight's output channels (", c_out,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) == c_in / groups && weight.size(3) == k, op,
              ": weight must have shape [C_out, C_in/groups = ", c_in / groups, ", K, K] (x has ", c_in,
              " channels, groups = ", groups, "), got ", weight.sizes());
  TORCH_CHECK(k % 2 == 1, op, ": weight's kernel size must be odd, got ", k);
  // Empty H or W too: padding alone would make up an output (stock conv2d refuses it as well).
  TORCH_CHECK(x.numel() > 0 && c_out > 0, op, ": x and weight must not be empty, got shapes ",
              x.sizes(), " and ", weight.sizes());
  const int64_t out_h = kernels::conv_out_size(x.size(2), k, stride, padding);
  const int64_t out_w = kernels::conv_out_size(x.size(3), k, stride, padding);
  TORCH_CHECK(x.size(2) + 2 * padding >= k && x.size(3) + 2 * padding >= k && out_h > 0 && out_w > 0,
              op, ": x's spatial size ", x.sizes().slice(2), " is smaller than the kernel (", k,
              ") with padding ", padding);
  uint64_t out_numel = 0;
  TORCH_CHECK(!c10::safe_multiplies_u64(std::array<int64_t, 4>{x.size(0), c_out, out_h, out_w}, &out_numel) &&
                  out_numel <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
              op, ": the output [", x.size(0), ", ", c_out, ", ", out_h, ", ", out_w,
              "] has too many elements (padding ", padding, ")");
  if (bias.defined()) {
    check_like(op, x, "x", bias, "bias");
    check_vector(op, bias, c_out, "bias");
  }
  check_like(op, x, "x", bn_weight, "bn_weight");
  check_vector(op, bn_weight, c_out, "bn_weight");
  check_like(op, x, "x", bn_bias, "bn_bias");
  check_vector(op, bn_bias, c_out, "bn_bias");
  if (residual.defined()) {
    check_like(op, x, "x", residual, "residual");
    check_shape(op, residual, {x.size(0), c_out, out_h, out_w}, "residual");
  }
  return kernels::make_conv_geometry(x.size(0), x.size(2), x.size(3), c_in, c_out, k, stride,
                                     padding, groups);
}

// conv_bn_act_backward's arguments (every backend): the conv geometry from x and weight, and
// grad_y, y, conv_out (needed in training), mean and var matching it.
inline kernels::ConvGeometry check_conv_bn_act_backward(
    const char* op, const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& x,
    const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& bn_weight,
    const at::Tensor& conv_out, const at::Tensor& mean, const at::Tensor& var, int64_t stride,
    int64_t padding, int64_t groups, bool training) {
  const kernels::ConvGeometry g = check_conv_bn_act(op, x, weight, bias, bn_weight, bn_weight,
                                                    at::Tensor(), stride, padding, groups);
  const std::vector<int64_t> out_shape{g.batch, g.out_c, g.out_h, g.out_w};
  check_like(op, x, "x", grad_y, "grad_y");
  check_shape(op, grad_y, out_shape, "grad_y");
  check_like(op, x, "x", y, "y");
  check_shape(op, y, out_shape, "y");
  TORCH_CHECK(!training || conv_out.defined(), op, ": training mode needs conv_out");
  if (conv_out.defined()) {
    check_like(op, x, "x", conv_out, "conv_out");
    check_shape(op, conv_out, out_shape, "conv_out");
  }
  TORCH_CHECK(mean.device() == x.device() && var.device() == x.device(), op,
              ": mean and var must be on x's device");
  check_vector(op, mean, g.out_c, "mean");
  check_vector(op, var, g.out_c, "var");
  return g;
}

// conv_bn_act_update_running_stats's arguments (every backend): four floating vectors of one
// length, the running ones contiguous (updated in place), a one-element num_batches_tracked on
// their device, and a positive count.
inline void check_running_stats_update(const char* op, const at::Tensor& running_mean,
                                       const at::Tensor& running_var, const at::Tensor& batch_mean,
                                       const at::Tensor& batch_var,
                                       const std::optional<at::Tensor>& num_batches_tracked,
                                       int64_t count) {
  const int64_t c = running_mean.numel();
  check_rank(op, running_mean, 1, "running_mean");
  check_floating(op, running_mean, "running_mean");
  check_like(op, running_mean, "running_mean", running_var, "running_var");
  check_vector(op, running_var, c, "running_var");
  check_vector(op, batch_mean, c, "batch_mean");
  check_vector(op, batch_var, c, "batch_var");
  TORCH_CHECK(batch_mean.device() == running_mean.device() && batch_var.device() == running_mean.device(), op,
              ": batch_mean and batch_var must be on running_mean's device (", running_mean.device(), ")");
  TORCH_CHECK(running_mean.is_contiguous() && running_var.is_contiguous(), op,
              ": running_mean and running_var must be contiguous (they are updated in place)");
  // The training operator's statistics are in the accumulation type.
  for (const auto* t : {&batch_mean, &batch_var}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, op, ": ",
                t == &batch_mean ? "batch_mean" : "batch_var", " must be float32 or float64, got ",
                t->scalar_type());
  }
  if (num_batches_tracked.has_value()) {
    // Meta or another device would also send the whole call to that device's kernel.
    TORCH_CHECK(num_batches_tracked->device() == running_mean.device(), op,
                ": num_batches_tracked must be on running_mean's device (", running_mean.device(),
                "), got ", num_batches_tracked->device());
    TORCH_CHECK(num_batches_tracked->numel() == 1, op,
                ": num_batches_tracked must have one element, got shape ", num_batches_tracked->sizes());
  }
  TORCH_CHECK(count >= 1, op, ": count must be >= 1, got ", count);
}

}  // namespace regnet_ext::checks
