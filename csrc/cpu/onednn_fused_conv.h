// oneDNN's convolution with the epilogue fused as post-ops: act(conv(x, W) + b [+ residual])
// written in one pass. This is the operator that inductor's CPU freezing calls
// (mkldnn::_convolution_pointwise, registered by ATen when it is built with oneDNN); we
// call it through the dispatcher so that a torch without it still loads our library.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <optional>
#include <string>
#include <vector>

#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

inline std::optional<c10::OperatorHandle> onednn_pointwise_op(const char* overload) {
  return c10::Dispatcher::singleton().findSchema({"mkldnn::_convolution_pointwise", overload});
}

// fn()'s result, or an undefined tensor (with a one-time warning) where oneDNN raised: the
// callers' "oneDNN cannot run it", so they take their fallback. On an AVX-512 Xeon with torch
// 2.11 one of these calls raised "could not create a memory" (3x3, 64 channels, one group, a 1x1
// input; 2026-12-04; not on AVX2 CPUs, so not reproduced on the development VM).
template <typename Fn>
inline at::Tensor unless_onednn_refuses(const Fn& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    TORCH_WARN_ONCE("conv_bn_act: oneDNN refused a convolution (", e.what(),
                    "); ATen's convolution and a separate epilogue pass run instead");
    return {};
  }
}

// oneDNN's weight reorder (mkldnn::_reorder_convolution_weight, the one torch.compile's freezing
// uses), or an undefined tensor where this torch lacks it or oneDNN refuses.
inline at::Tensor onednn_pack_conv_weight(const at::Tensor& weight, const kernels::ConvGeometry& g,
                                          const at::Tensor& x) {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_convolution_weight", ""});
  if (!op) return {};
  return unless_onednn_refuses([&] {
    torch::jit::Stack stack{weight, std::vector<int64_t>{g.padding, g.padding},
                            std::vector<int64_t>{g.stride, g.stride}, std::vector<int64_t>{1, 1},
                            g.groups, x.sizes().vec()};
    op->callBoxed(stack);
    return stack.at(0).toTensor();
  });
}

// Whether this CPU runs oneDNN's 16-bit convs (ATen's own check: bfloat16 needs AVX-512 BW/VL/DQ
// or AVX-NE-CONVERT, float16 AVX512-FP16 or AVX-NE-CONVERT); elsewhere oneDNN refuses them and
// at::convolution takes another path, as stock PyTorch's 16-bit convs do.
inline bool onednn_supports(const char* check) {
  const auto op = c10::Dispatcher::singleton().findSchema({check, ""});
  if (!op) return false;
  torch::jit::Stack stack;
  op->callBoxed(stack);
  return stack.at(0).toBool();
}

inline bool onednn_16bit_supported(at::ScalarType dtype) {
  static const bool bfloat16 = onednn_supports("mkldnn::_is_mkldnn_bf16_supported");
  static const bool float16 = onednn_supports("mkldnn::_is_mkldnn_fp16_supported");
  return dtype == at::kBFloat16 ? bfloat16 : dtype == at::kHalf ? float16 : true;
}

// Whether oneDNN can run act(conv + b [+ residual]) for this dtype and group count: not where
// this torch lacks oneDNN or the user disabled it, not for float64, and not for grouped 16-bit
// convs with a residual.
inline bool onednn_fusable(at::ScalarType dtype, bool with_residual, int64_t groups) {
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  if (!at::globalContext().userEnabledMkldnn()) return false;
  // ATen fuses the residual only for ungrouped convs (groups == 1, channels_last); otherwise it
  // falls back to conv + at::add_relu_, which refuses 16-bit types (torch 2.14.1: an internal
  // assert). RegNet's residual goes into an ungrouped 1x1 conv, so its 16-bit blocks fuse.
  if (with_residual && dtype != at::kFloat && groups != 1) return false;
  if (!onednn_16bit_supported(dtype)) return false;
  static const bool available = onednn_pointwise_op("").has_value() && onednn_pointwise_op("binary").has_value();
  return available;
}

// The result in x's (channels_last) layout, or an undefined tensor where oneDNN cannot run it
// (!onednn_fusable) or refuses (unless_onednn_refuses); callers then fall back to a conv and a
// separate epilogue pass.
// weight_packed: the weight is already in oneDNN's blocked layout (folded_weight_cache.h).
inline at::Tensor onednn_fused_conv(const at::Tensor& x_nhwc, const at::Tensor& weight,
                                    const at::Tensor& bias, const at::Tensor& residual_nhwc,
                                    const kernels::ConvGeometry& g, bool relu, bool weight_packed = false) {
  const bool with_residual = residual_nhwc.defined();
  if (!onednn_fusable(x_nhwc.scalar_type(), with_residual, g.groups)) return {};
  static const std::optional<c10::OperatorHandle> unary = onednn_pointwise_op("");
  static const std::optional<c10::OperatorHandle> binary = onednn_pointwise_op("binary");
  const auto& op = with_residual ? binary : unary;

  const std::vector<int64_t> padding{g.padding, g.padding}, stride{g.stride, g.stride}, dilation{1, 1};
  const std::string act = relu ? "relu" : "none";
  const c10::IValue b = bias.defined() ? c10::IValue(bias) : c10::IValue();
  const at::Tensor w = weight_packed ? weight : weight.contiguous(at::MemoryFormat::ChannelsLast);
  torch::jit::Stack stack;
  if (with_residual)
    stack = {x_nhwc, residual_nhwc, w, b, padding, stride, dilation, g.groups, std::string("add"),
             c10::IValue(), relu ? c10::IValue(act) : c10::IValue(),  // "none" is refused here
             c10::List<std::optional<at::Scalar>>(), std::string()};
  else
    stack = {x_nhwc, w, b, padding, stride, dilation, g.groups, act,
             c10::List<std::optional<at::Scalar>>(), std::string()};
  return unless_onednn_refuses([&] {
    op->callBoxed(stack);
    return stack.at(0).toTensor();
  });
}

}  // namespace regnet_ext::cpu
