// CUDA implementation of conv_bn_act's operators: host orchestration on the current stream under
// a device guard, with no host-device synchronisation. Which conv does what, and why:
//  * grouped / dense 3x3 convs with C/groups % 8 == 0 (every RegNet 3x3 conv): our NHWC kernel
//    (grouped_conv3x3.cu) with BN, residual and ReLU in its epilogue (eval: one pass), or with the
//    BN moments gathered in its epilogue (training); except wide groups with much work, where
//    cuDNN's tensor cores win (cudnn_is_faster) and the conv goes the fallback way below.
//  * 1x1 ungrouped convs: GEMMs through ATen's addmm / _addmm_activation, which run cuBLASLt with
//    the folded BN shift (and ReLU) in its bias epilogue; with a residual, one elementwise pass
//    adds it and applies ReLU. A hand-written GEMM would not reach cuBLAS's tensor-core speed.
//  * anything else (the 3-channel stem, narrow groups, other kernel sizes): ATen's convolution
//    (cuDNN) followed by one elementwise epilogue pass.
//  * training: after the conv pass, per-channel moments are merged (finalize kernel) and one pass
//    applies BN + residual + ReLU (the statistics must be complete before anything is normalised).
//  * backward: two fused elementwise/reduction passes for BN (bn_kernels.cu), then the conv's input
//    and weight gradients through ATen's convolution_backward (cuDNN / cuBLAS).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "cuda/element_type_of.h"
#include "cuda/bn_kernels.h"
#include "cuda/grouped_conv3x3.h"
#include "tensor_layout.h"

namespace regnet_ext::cuda {
namespace {

using kernels::ConvGeometry;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

constexpr const char* kOp = "conv_bn_act (CUDA)";

ElementType element_type(const at::Tensor& x) { return element_type_of(x, kOp); }

// The output keeps x's memory format; the same rule as the CPU backend and the fake kernel.
at::MemoryFormat output_memory_format(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous;
}

at::Tensor to_nhwc(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

at::Tensor empty_nhwc(const at::Tensor& like, int64_t n, int64_t c, int64_t h, int64_t w) {
  return at::empty({n, c, h, w}, like.options().memory_format(at::MemoryFormat::ChannelsLast));
}

// Channels-last [N, C, H, W] is [N*H*W, C] rows in memory.
at::Tensor as_rows(const at::Tensor& nhwc) { return nhwc.permute({0, 2, 3, 1}).reshape({-1, nhwc.size(1)}); }

bool is_plain_gemm(const ConvGeometry& g) { return g.kernel == 1 && g.groups == 1 && g.padding == 0; }

// The GEMM's [M, C_in] operand: x itself, or a copy of its every stride-th pixel.
at::Tensor gemm_rows(const at::Tensor& x_nhwc, const ConvGeometry& g) {
  at::Tensor v = x_nhwc;
  if (g.stride > 1) v = v.slice(2, 0, g.in_h, g.stride).slice(3, 0, g.in_w, g.stride);
  return v.permute({0, 2, 3, 1}).contiguous().view({-1, g.in_c});
}

bool aligned(const at::Tensor& t, int64_t bytes) {
  return !t.defined() || reinterpret_cast<uintptr_t>(t.const_data_ptr()) % bytes == 0;
}

// Grouped 3x3 convs that cuDNN runs faster than our SIMT kernel (CUDA-core FMAs; cuDNN uses tensor
// cores in 16-bit types, and in float32 where TF32 is allowed for convs, PyTorch's default): more
// than 16 channels per group and at least 2^29 multiply-adds. On an H200 (eval, batch 8,
// benchmarks/results/h200/) ours ran 0.31-0.64x eager (cuDNN conv + BN + ReLU) in float32 and
// 0.35-0.60x in bfloat16 at 694M and 1850M multiply-adds with 64 per group; below that each call
// costs about 0.1 ms of launches whatever the conv, and ours ran 0.48-1.53x (float32) and
// 1.21-6.11x (bfloat16, where cuDNN's grouped NHWC conv was slow). 8 and 16 per group: ours
// 1.29-3.26x at every size measured.
bool cudnn_is_faster(const ConvGeometry& g, at::ScalarType dtype) {
  const int64_t macs = g.batch * g.out_h * g.out_w * g.out_c * g.in_c_per_group * g.kernel * g.kernel;
  const bool tensor_cores = dtype != at::kFloat || at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
  return tensor_cores && g.in_c_per_group > 16 && macs >= (int64_t(1) << 29);
}

// Our 3x3 kernel takes the conv when the geometry fits, its vector loads are aligned and cuDNN is
// not the faster one.
bool use_grouped_kernel(const ConvGeometry& g, const at::Tensor& x_nhwc, const at::Tensor& residual) {
  return grouped_conv3x3_supported(g) && aligned(x_nhwc, 16) && aligned(residual, 4 * x_nhwc.element_size()) &&
         !cudnn_is_faster(g, x_nhwc.scalar_type());
}

Affine* affine_ptr(at::Tensor& t) { return reinterpret_cast<Affine*>(t.data_ptr<float>()); }
const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

// out_rows [M, C_out] = act(rows [M, C_in] @ w[C_out, C_in]^T + shift + residual_rows), shift and
// residual optional (undefined). ATen's CUDA addmm with a 1-D bias runs cuBLASLt's bias epilogue
// (and _addmm_activation its bias+ReLU epilogue), so without a residual the GEMM writes y once.
// (at::cuda::blas::gemm_and_bias itself is not exported by libtorch_cuda, so we go through the
// public operators.) With a residual, one elementwise pass adds it and applies ReLU.
void gemm_epilogue(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& shift, const at::Tensor& residual_rows,
                   bool relu, at::Tensor& out_rows, cudaStream_t stream) {
  const at::Tensor wt = w.t();
  if (shift.defined()) {
    const at::Tensor bias = shift.to(rows.scalar_type()).contiguous();
    if (relu && !residual_rows.defined()) {
      at::_addmm_activation_out(out_rows, bias, rows, wt, 1, 1, /*use_gelu=*/false);
      return;
    }
    at::addmm_out(out_rows, bias, rows, wt);
  } else {
    at::mm_out(out_rows, rows, wt);
  }
  if (!relu && !residual_rows.defined()) return;
  const int64_t c_out = w.size(0);
  const auto f32 = rows.options().dtype(at::kFloat);
  at::Tensor identity = at::stack({at::ones({c_out}, f32), at::zeros({c_out}, f32)}, 1).contiguous();
  launch_apply_epilogue(out_rows.const_data_ptr(), affine_ptr(identity), ptr_or_null(residual_rows), relu,
                        rows.size(0), c_out, element_type(rows), out_rows.data_ptr(), stream);
}

// ---- forward ----------------------------------------------------------------------------------

at::Tensor conv_bn_act_eval_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& running_mean,
                                 const at::Tensor& running_var, const std::optional<at::Tensor>& residual,
                                 int64_t stride, int64_t padding, int64_t groups, double eps, bool relu) {
  const at::Tensor b = bias.value_or(at::Tensor()), r = residual.value_or(at::Tensor());
  const ConvGeometry g = checks::check_conv_bn_act(kOp, x, weight, b, bn_weight, bn_bias, r, stride, padding, groups);
  checks::check_eps(kOp, eps);
  checks::check_like(kOp, x, "x", running_mean, "running_mean");
  checks::check_vector(kOp, running_mean, g.out_c, "running_mean");
  checks::check_like(kOp, x, "x", running_var, "running_var");
  checks::check_vector(kOp, running_var, g.out_c, "running_var");
  const ElementType dtype = element_type(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor xc = to_nhwc(x), res = r.defined() ? to_nhwc(r) : at::Tensor();
  const at::Tensor gamma = bn_weight.contiguous(), beta = bn_bias.contiguous();
  const at::Tensor rm = running_mean.contiguous(), rv = running_var.contiguous(), bc = b.defined() ? b.contiguous() : b;
  at::Tensor affine = at::empty({g.out_c, 2}, x.options().dtype(at::kFloat));
  launch_channel_affine(gamma.const_data_ptr(), beta.const_data_ptr(), rm.const_data_ptr(), rv.const_data_ptr(),
                        ptr_or_null(bc), eps, g.out_c, dtype, affine_ptr(affine), stream);
  at::Tensor y = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
  if (use_grouped_kernel(g, xc, res)) {
    at::Tensor packed = at::empty({weight.numel()}, x.options().dtype(at::kFloat));
    launch_pack_weight(weight.contiguous().const_data_ptr(), g, dtype, packed.data_ptr<float>(), stream);
    GroupedConv3x3Params p{g, xc.const_data_ptr(), packed.const_data_ptr<float>(), affine_ptr(affine),
                           ptr_or_null(res), y.data_ptr(), nullptr, nullptr, relu};
    launch_grouped_conv3x3(p, dtype, stream);
  } else if (is_plain_gemm(g)) {
    // Fold BN's scale into the weights (W' = W * scale) so the GEMM's epilogue only adds the shift.
    const at::Tensor folded =
        (weight.reshape({g.out_c, g.in_c}).to(at::kFloat) * affine.select(1, 0).unsqueeze(1)).to(x.scalar_type()).contiguous();
    at::Tensor y_rows = as_rows(y);
    gemm_epilogue(gemm_rows(xc, g), folded, affine.select(1, 1), res.defined() ? as_rows(res) : at::Tensor(), relu,
                  y_rows, stream);
  } else {
    const at::Tensor z = to_nhwc(at::convolution(xc, weight, std::nullopt, {stride, stride}, {padding, padding}, {1, 1},
                                                 false, {0, 0}, groups));
    launch_apply_epilogue(z.const_data_ptr(), affine_ptr(affine), ptr_or_null(res), relu,
                          g.batch * g.out_h * g.out_w, g.out_c, dtype, y.data_ptr(), stream);
  }
  return y.contiguous(output_memory_format(x));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv_bn_act_train_cuda(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const std::optional<at::Tensor>& residual, int64_t stride, int64_t padding,
    int64_t groups, double eps, bool relu) {
  const at::Tensor b = bias.value_or(at::Tensor()), r = residual.value_or(at::Tensor());
  const ConvGeometry g = checks::check_conv_bn_act(kOp, x, weight, b, bn_weight, bn_bias, r, stride, padding, groups);
  checks::check_eps(kOp, eps);
  const ElementType dtype = element_type(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto f32 = x.options().dtype(at::kFloat);

  const at::Tensor xc = to_nhwc(x), res = r.defined() ? to_nhwc(r) : at::Tensor();
  const at::Tensor bc = b.defined() ? b.contiguous() : b;
  const int64_t rows = g.batch * g.out_h * g.out_w;
  // Pass 1: z = conv(x) + b and per-channel moments (in the conv's epilogue where it is ours).
  at::Tensor z = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
  at::Tensor partials;
  int64_t partial_rows;
  if (use_grouped_kernel(g, xc, at::Tensor())) {
    at::Tensor bias_affine = at::empty({g.out_c, 2}, f32);
    launch_channel_affine(nullptr, nullptr, nullptr, nullptr, ptr_or_null(bc), eps, g.out_c, dtype,
                          affine_ptr(bias_affine), stream);
    at::Tensor packed = at::empty({weight.numel()}, f32);
    launch_pack_weight(weight.contiguous().const_data_ptr(), g, dtype, packed.data_ptr<float>(), stream);
    partial_rows = g.batch * grouped_conv3x3_tiles_per_image(g);
    partials = at::empty({partial_rows, g.out_c, 3}, f32);
    GroupedConv3x3Params p{g, xc.const_data_ptr(), packed.const_data_ptr<float>(), affine_ptr(bias_affine), nullptr,
                           z.data_ptr(), nullptr, reinterpret_cast<Moments*>(partials.data_ptr<float>()), false};
    launch_grouped_conv3x3(p, dtype, stream);
  } else {
    if (is_plain_gemm(g)) {
      at::Tensor z_rows = as_rows(z);
      gemm_epilogue(gemm_rows(xc, g), weight.reshape({g.out_c, g.in_c}).contiguous(), bc, at::Tensor(), false, z_rows,
                    stream);
    } else {
      z = to_nhwc(at::convolution(xc, weight, bc.defined() ? std::optional<at::Tensor>(bc) : std::nullopt,
                                  {stride, stride}, {padding, padding}, {1, 1}, false, {0, 0}, groups));
    }
    partial_rows = row_chunks(rows);
    partials = at::empty({partial_rows, g.out_c, 3}, f32);
    launch_moments_partials(z.const_data_ptr(), rows, g.out_c, dtype, reinterpret_cast<Moments*>(partials.data_ptr<float>()),
                            stream);
  }
  at::Tensor mean = at::empty({g.out_c}, f32), var = at::empty({g.out_c}, f32);
  at::Tensor affine = at::empty({g.out_c, 2}, f32);
  const at::Tensor gamma = bn_weight.contiguous(), beta = bn_bias.contiguous();
  launch_finalize_moments(reinterpret_cast<const Moments*>(partials.const_data_ptr<float>()), partial_rows, g.out_c,
                          gamma.const_data_ptr(), beta.const_data_ptr(), eps, dtype, mean.data_ptr<float>(),
                          var.data_ptr<float>(), affine_ptr(affine), stream);
  // Pass 2: normalise, add the residual, activate.
  at::Tensor y = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
  launch_apply_epilogue(z.const_data_ptr(), affine_ptr(affine), ptr_or_null(res), relu, rows, g.out_c, dtype,
                        y.data_ptr(), stream);
  return {y.contiguous(output_memory_format(x)), z, mean, var};
}

void update_running_stats_cuda(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& batch_mean,
                               const at::Tensor& batch_var, const std::optional<at::Tensor>& num_batches_tracked,
                               int64_t count, double momentum, bool cumulative) {
  constexpr const char* op = "conv_bn_act_update_running_stats (CUDA)";
  checks::check_running_stats_update(op, running_mean, running_var, batch_mean, batch_var, num_batches_tracked,
                                     count);
  const int64_t c = running_mean.numel();
  int running_dtype = 0;
  switch (running_mean.scalar_type()) {
    case at::kFloat: running_dtype = 0; break;
    case at::kHalf: running_dtype = 1; break;
    case at::kBFloat16: running_dtype = 2; break;
    case at::kDouble: running_dtype = 3; break;
    default: TORCH_CHECK(false, op, ": running_mean must be a floating type, got ", running_mean.scalar_type());
  }
  at::Tensor batches;
  if (cumulative) {
    TORCH_CHECK(num_batches_tracked.has_value() && num_batches_tracked->numel() == 1, op,
                ": momentum=None (cumulative average) needs num_batches_tracked");
    TORCH_CHECK(num_batches_tracked->device() == running_mean.device(), op,
                ": num_batches_tracked must be on running_mean's device");
    batches = num_batches_tracked->to(at::kLong).contiguous();  // read on the device: no sync
  }
  const c10::cuda::CUDAGuard guard(running_mean.device());
  const at::Tensor bm = batch_mean.to(at::kDouble).contiguous(), bv = batch_var.to(at::kDouble).contiguous();
  launch_update_running_stats(running_mean.data_ptr(), running_var.data_ptr(), running_dtype, bm.const_data_ptr<double>(),
                              bv.const_data_ptr<double>(), c, count, momentum,
                              batches.defined() ? batches.const_data_ptr<int64_t>() : nullptr,
                              at::cuda::getCurrentCUDAStream());
}

// ---- backward ---------------------------------------------------------------------------------

Grads conv_bn_act_backward_cuda(const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& x,
                                const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                const at::Tensor& bn_weight, const std::optional<at::Tensor>& conv_out,
                                const at::Tensor& mean, const at::Tensor& var, int64_t stride, int64_t padding,
                                int64_t groups, double eps, bool relu, bool training, bool input_grad,
                                bool param_grads, bool residual_grad) {
  constexpr const char* op = "conv_bn_act_backward (CUDA)";
  const at::Tensor b = bias.value_or(at::Tensor()), z_in = conv_out.value_or(at::Tensor());
  const ConvGeometry g = checks::check_conv_bn_act_backward(op, grad_y, y, x, weight, b, bn_weight, z_in, mean, var,
                                                            stride, padding, groups, training);
  checks::check_eps(op, eps);
  const ElementType dtype = element_type(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto f32 = x.options().dtype(at::kFloat);
  const at::MemoryFormat format = output_memory_format(x);
  const int64_t C = g.out_c, rows = g.batch * g.out_h * g.out_w, partial_rows = row_chunks(rows);

  const at::Tensor dy = to_nhwc(grad_y), yc = to_nhwc(y), zc = training ? to_nhwc(z_in) : at::Tensor();
  const at::Tensor mean_f = mean.to(at::kFloat).contiguous(), var_f = var.to(at::kFloat).contiguous();
  const at::Tensor gamma = bn_weight.contiguous();
  // Pass 1: g = ReLU'(y) * dy (also the residual's gradient) and its per-channel sums.
  at::Tensor grad_out = empty_nhwc(x, g.batch, C, g.out_h, g.out_w);
  at::Tensor partials = at::empty({partial_rows, C, 2}, f32);
  launch_grad_partials(dy.const_data_ptr(), yc.const_data_ptr(), ptr_or_null(zc), mean_f.const_data_ptr<float>(),
                       var_f.const_data_ptr<float>(), eps, relu, rows, C, dtype, grad_out.data_ptr(),
                       reinterpret_cast<GradSums*>(partials.data_ptr<float>()), stream);
  static_assert(sizeof(BnBackwardCoef) == 7 * sizeof(float), "coefficient rows are 7 floats");
  at::Tensor coef = at::empty({C, 7}, f32);
  launch_finalize_grad(reinterpret_cast<const GradSums*>(partials.const_data_ptr<float>()), partial_rows, C, rows,
                       mean_f.const_data_ptr<float>(), var_f.const_data_ptr<float>(), gamma.const_data_ptr(), eps,
                       dtype, reinterpret_cast<BnBackwardCoef*>(coef.data_ptr<float>()),
                       stream);
  // Training: dz from the batch-statistics backward (pass 2); eval: the folded conv sees g itself.
  at::Tensor dz = grad_out, sum_dz = at::zeros({C}, f32);
  if (training) {
    dz = empty_nhwc(x, g.batch, C, g.out_h, g.out_w);
    at::Tensor dz_partials = at::empty({partial_rows, C, 2}, f32);
    launch_train_input_grad(grad_out.const_data_ptr(), zc.const_data_ptr(),
                            reinterpret_cast<const BnBackwardCoef*>(coef.const_data_ptr<float>()), rows, C, dtype,
                            dz.data_ptr(), reinterpret_cast<GradSums*>(dz_partials.data_ptr<float>()), stream);
    launch_sum_partials(reinterpret_cast<const GradSums*>(dz_partials.const_data_ptr<float>()), partial_rows, C,
                        sum_dz.data_ptr<float>(), stream);
  }
  const at::Tensor scale = coef.select(1, 2);
  const at::Tensor w_eff =
      training ? weight : (weight.to(at::kFloat) * scale.view({C, 1, 1, 1})).to(weight.scalar_type());
  at::Tensor grad_x = at::empty({0}, x.options());
  at::Tensor raw;
  if (input_grad || param_grads) {
    auto conv_grads = at::convolution_backward(dz, to_nhwc(x), w_eff, std::nullopt, {stride, stride},
                                               {padding, padding}, {1, 1}, false, {0, 0}, groups,
                                               {input_grad, param_grads, false});
    if (input_grad) grad_x = std::get<0>(conv_grads).contiguous(format);
    if (param_grads) raw = std::get<1>(conv_grads).to(at::kFloat);
  }
  at::Tensor grad_w = at::empty({0}, weight.options()), grad_b = at::empty({0}, weight.options());
  at::Tensor grad_gamma = at::empty({0}, weight.options()), grad_beta = at::empty({0}, weight.options());
  if (param_grads) {
    // cuDNN may return an NHWC-strided weight gradient; the operator returns weight's own layout.
    grad_w = in_layout_of((training ? raw : raw * scale.view({C, 1, 1, 1})).to(weight.scalar_type()), weight);
    const at::Tensor dot = training ? at::zeros({C}, f32) : (raw * weight.to(at::kFloat)).sum({1, 2, 3}).contiguous();
    at::Tensor dgamma = at::empty({C}, f32), dbeta = at::empty({C}, f32), dbias = at::empty({C}, f32);
    const at::Tensor bc = b.defined() ? b.contiguous() : b;
    launch_bn_param_grads(reinterpret_cast<const BnBackwardCoef*>(coef.const_data_ptr<float>()), dot.const_data_ptr<float>(),
                          sum_dz.const_data_ptr<float>(), ptr_or_null(bc), training, C, dtype, dgamma.data_ptr<float>(),
                          dbeta.data_ptr<float>(), dbias.data_ptr<float>(), stream);
    grad_gamma = dgamma.to(bn_weight.scalar_type());
    grad_beta = dbeta.to(bn_weight.scalar_type());
    if (b.defined()) grad_b = dbias.to(b.scalar_type());
  }
  // (The CPU backend also reuses g's buffer for dz when it is not returned; not done here yet.)
  at::Tensor grad_residual = residual_grad ? grad_out.contiguous(format) : at::empty({0}, x.options());
  return {grad_x, grad_w, grad_b, grad_gamma, grad_beta, grad_residual};
}

}  // namespace
}  // namespace regnet_ext::cuda

TORCH_LIBRARY_IMPL(regnet_ext, CUDA, m) {
  m.impl("conv_bn_act_eval", &regnet_ext::cuda::conv_bn_act_eval_cuda);
  m.impl("conv_bn_act_eval.uncached", &regnet_ext::cuda::conv_bn_act_eval_cuda);  // no cache on CUDA
  m.impl("conv_bn_act_train", &regnet_ext::cuda::conv_bn_act_train_cuda);
  m.impl("conv_bn_act_update_running_stats", &regnet_ext::cuda::update_running_stats_cuda);
  m.impl("conv_bn_act_backward", &regnet_ext::cuda::conv_bn_act_backward_cuda);
}
