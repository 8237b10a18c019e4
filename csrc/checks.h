// Host-side input checks shared by every backend's operator implementations: each failure is a
// c10::Error (RuntimeError in Python) that names the operator, the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

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
  const int64_t c_in = x.size(1), c_out = weight.size(0), k = weight.size(2);
  TORCH_CHECK(c_in % groups == 0, op, ": x's channels (", c_in, ") must be divisible by groups (",
              groups, ")");
  TORCH_CHECK(c_out % groups == 0, op, ": weight's output channels (", c_out,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(weight.size(1) == c_in / groups && weight.size(3) == k, op,
              ": weight must have shape [C_out, C_in/groups = ", c_in / groups, ", K, K], got ",
              weight.sizes());
  TORCH_CHECK(k % 2 == 1, op, ": weight's kernel size must be odd, got ", k);
  TORCH_CHECK(x.size(0) > 0 && c_in > 0 && c_out > 0, op, ": x and weight must not be empty");
  const int64_t out_h = kernels::conv_out_size(x.size(2), k, stride, padding);
  const int64_t out_w = kernels::conv_out_size(x.size(3), k, stride, padding);
  TORCH_CHECK(x.size(2) + 2 * padding >= k && x.size(3) + 2 * padding >= k && out_h > 0 && out_w > 0,
              op, ": x's spatial size ", x.sizes().slice(2), " is smaller than the kernel (", k,
              ") with padding ", padding);
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

}  // namespace regnet_ext::checks
