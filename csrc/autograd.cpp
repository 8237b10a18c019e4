// Autograd for the regnet_ext operators, registered for the Autograd dispatch key in C++.
//
// Each forward operator runs its backend kernel below autograd and differentiates through its
// backward operator; the backward operators refuse to be differentiated again. (These lived in
// Python through torch.library.register_autograd, whose per-call Python work, about 40 us per
// call on this project's CPU, cost more than a small RegNet layer's epilogue.) torch.compile
// traces these kernels like ATen's own autograd: forward and backward operators both have
// fake kernels (regnet_ext/ops).
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "op_signatures.h"

namespace regnet_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

// ---- the operators below autograd -------------------------------------------------------------

using ConvGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using ConvBackwardSignature = ConvGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, const OptTensor&, const at::Tensor&,
                                        const OptTensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                        int64_t, int64_t, double, bool, bool, bool, bool, bool);
using SEGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using SESignature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&);
using SEBackwardSignature = SEGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, const at::Tensor&);
using UpdateStatsSignature = void(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const OptTensor&, int64_t, double, bool);
using HeadSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&);
using HeadGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using HeadBackwardSignature = HeadGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&);

const auto& eval_op(bool cached = true) {
  static const auto op = find_op<EvalSignature>("regnet_ext::conv_bn_act_eval");
  static const auto uncached = find_op<EvalSignature>("regnet_ext::conv_bn_act_eval", "uncached");
  return cached ? op : uncached;
}
const auto& train_op() {
  static const auto op = find_op<TrainSignature>("regnet_ext::conv_bn_act_train");
  return op;
}
const auto& conv_backward_op() {
  static const auto op = find_op<ConvBackwardSignature>("regnet_ext::conv_bn_act_backward");
  return op;
}
const auto& se_op() {
  static const auto op = find_op<SESignature>("regnet_ext::squeeze_excite");
  return op;
}
const auto& se_backward_op() {
  static const auto op = find_op<SEBackwardSignature>("regnet_ext::squeeze_excite_backward");
  return op;
}

const auto& update_stats_op() {
  static const auto op = find_op<UpdateStatsSignature>("regnet_ext::conv_bn_act_update_running_stats");
  return op;
}
const auto& head_op() {
  static const auto op = find_op<HeadSignature>("regnet_ext::pool_linear");
  return op;
}
const auto& head_backward_op() {
  static const auto op = find_op<HeadBackwardSignature>("regnet_ext::pool_linear_backward");
  return op;
}

// Whether a call needs its autograd Function: an input that requires grad while grad mode is on,
// or one with a forward-mode tangent at level 0 (the only level Function::apply looks at; ours
// have no jvp and refuse it there). Otherwise the kernels below run the call straight, as ATen's
// own autograd kernels do: under torch.no_grad, the Function's graph node, saved tensors and
// settings and output wrapping took 2.8% of the main thread in RegNetX-400MF's fused forward
// (batch 8 at 224, Ice Lake VM), and the backward operators' wrappers run without grad mode on
// every training step.
bool tracked(const at::Tensor& t, bool grad_mode) {
  if (!t.defined() || t.unsafeGetTensorImpl()->autograd_meta() == nullptr) return false;
  return (grad_mode && t.requires_grad()) || t._fw_grad(/*level=*/0).defined();
}
bool tracked(const OptTensor& t, bool grad_mode) { return t.has_value() && tracked(*t, grad_mode); }

template <typename... Tensors>
bool needs_autograd(const Tensors&... tensors) {
  const bool grad_mode = at::GradMode::is_enabled();
  return (tracked(tensors, grad_mode) || ...);
}

at::Tensor or_undefined(const OptTensor& t) { return t.value_or(at::Tensor()); }
OptTensor optional_of(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// ---- conv_bn_act --------------------------------------------------------------------------------

struct ConvSettings {
  int64_t stride, padding, groups;
  double eps;
  bool relu, has_bias, has_residual;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["has_residual"] = has_residual;
  }
  static ConvSettings load(AutogradContext* ctx) {
    auto& d = ctx->saved_data;
    return {d["stride"].toInt(), d["padding"].toInt(), d["groups"].toInt(), d["eps"].toDouble(),
            d["relu"].toBool(), d["has_bias"].toBool(), d["has_residual"].toBool()};
  }
};

// Calls the backward operator and lays its gradients out per forward input: x, weight, bias,
// bn_weight, bn_bias at 0..4, the residual at `residual_index`, none for the rest.
variable_list conv_input_grads(AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& y,
                               const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& bn_weight, const at::Tensor& conv_out,
                               const at::Tensor& mean, const at::Tensor& var, bool training,
                               size_t n_inputs, size_t residual_index) {
  const ConvSettings s = ConvSettings::load(ctx);
  // needs_input_grad counts tensor inputs only: an absent bias or residual has no edge.
  auto needs = [&](size_t arg) {
    if ((arg == 2 && !s.has_bias) || (arg == residual_index && !s.has_residual)) return false;
    return ctx->needs_input_grad(arg > 2 && !s.has_bias ? arg - 1 : arg);
  };
  const bool input_grad = needs(0);
  const bool param_grads = needs(1) || needs(2) || needs(3) || needs(4);
  const bool residual_grad = needs(residual_index);
  // Without ReLU the forward saved no y (an in-place change of the output, as a residual add
  // into it, must not break the backward): the backward reads y only for ReLU's mask, and
  // grad_y stands in for it.
  auto [gx, gw, gb, ggamma, gbeta, gres] = conv_backward_op().call(
      grad_y, s.relu ? y : grad_y, x, weight, optional_of(bias), bn_weight, optional_of(conv_out), mean, var,
      s.stride, s.padding, s.groups, s.eps, s.relu, training, input_grad, param_grads, residual_grad);
  variable_list out(n_inputs);
  if (input_grad) out[0] = gx;
  if (needs(1)) out[1] = gw;
  if (needs(2)) out[2] = gb;
  if (needs(3)) out[3] = ggamma;
  if (needs(4)) out[4] = gbeta;
  if (residual_grad) out[residual_index] = gres;
  return out;
}

struct ConvBnActEval : Function<ConvBnActEval> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const OptTensor& bias, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                            const at::Tensor& running_mean, const at::Tensor& running_var,
                            const OptTensor& residual, int64_t stride, int64_t padding, int64_t groups,
                            double eps, bool relu, bool cached) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = eval_op(cached).call(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                               stride, padding, groups, eps, relu);
    }
    ctx->save_for_backward(
        {x, weight, or_undefined(bias), bn_weight, running_mean, running_var, relu ? y : at::Tensor()});
    ConvSettings{stride, padding, groups, eps, relu, bias.has_value(), residual.has_value()}.save(ctx);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    // x, weight, bias, bn_weight, running_mean, running_var, y (with ReLU)
    return conv_input_grads(ctx, grads[0], saved[6], saved[0], saved[1], saved[2], saved[3],
                            at::Tensor(), saved[4], saved[5], /*training=*/false, 14, 7);
  }
};

struct ConvBnActTrain : Function<ConvBnActTrain> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const OptTensor& bias, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                               const OptTensor& residual, int64_t stride, int64_t padding, int64_t groups,
                               double eps, bool relu) {
    at::Tensor y, z, mean, var;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(y, z, mean, var) = train_op().call(x, weight, bias, bn_weight, bn_bias, residual, stride,
                                                  padding, groups, eps, relu);
    }
    ctx->mark_non_differentiable({z, mean, var});
    ctx->set_materialize_grads(false);  // no zero-filled gradient for z (activation-sized)
    ctx->save_for_backward({x, weight, or_undefined(bias), bn_weight, relu ? y : at::Tensor(), z, mean, var});
    ConvSettings{stride, padding, groups, eps, relu, bias.has_value(), residual.has_value()}.save(ctx);
    return {y, z, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(11);
    const auto saved = ctx->get_saved_variables();
    // x, weight, bias, bn_weight, y, z, mean, var
    return conv_input_grads(ctx, grads[0], saved[4], saved[0], saved[1], saved[2], saved[3],
                            saved[5], saved[6], saved[7], /*training=*/true, 11, 5);
  }
};

template <bool kCached>
at::Tensor conv_bn_act_eval_autograd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                                     const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                                     const at::Tensor& running_mean, const at::Tensor& running_var,
                                     const OptTensor& residual, int64_t stride, int64_t padding,
                                     int64_t groups, double eps, bool relu) {
  if (!needs_autograd(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return eval_op(kCached).call(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                                 stride, padding, groups, eps, relu);
  }
  return ConvBnActEval::apply(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual,
                              stride, padding, groups, eps, relu, kCached);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv_bn_act_train_autograd(
    const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias, const at::Tensor& bn_weight,
    const at::Tensor& bn_bias, const OptTensor& residual, int64_t stride, int64_t padding, int64_t groups,
    double eps, bool relu) {
  if (!needs_autograd(x, weight, bias, bn_weight, bn_bias, residual)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return train_op().call(x, weight, bias, bn_weight, bn_bias, residual, stride, padding, groups, eps, relu);
  }
  const auto out = ConvBnActTrain::apply(x, weight, bias, bn_weight, bn_bias, residual, stride, padding,
                                         groups, eps, relu);
  return {out[0], out[1], out[2], out[3]};
}

// ---- squeeze_excite -----------------------------------------------------------------------------

struct SqueezeExcite : Function<SqueezeExcite> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1,
                            const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = se_op().call(x, w1, b1, w2, b2);
    }
    ctx->save_for_backward({x, w1, b1, w2, b2});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [gx, gw1, gb1, gw2, gb2] = se_backward_op().call(grads[0], s[0], s[1], s[2], s[3], s[4]);
    return {gx, gw1, gb1, gw2, gb2};
  }
};

at::Tensor squeeze_excite_autograd(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                   const at::Tensor& w2, const at::Tensor& b2) {
  if (!needs_autograd(x, w1, b1, w2, b2)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return se_op().call(x, w1, b1, w2, b2);
  }
  return SqueezeExcite::apply(x, w1, b1, w2, b2);
}

// ---- the running-statistics update: version counters ----------------------------------------------

// An in-place write must bump the written tensors' version counters, as ATen's in-place ops do
// (their ADInplaceOrView kernels), or caches keyed on versions go stale: the fused modules' and
// the eval operator's folded weights are, and before this an eval call after training-mode
// forwards that changed only the running statistics (BN recalibration, frozen conv weights)
// reused the fold of the old statistics.
void update_running_stats_inplace(at::Tensor& running_mean, at::Tensor& running_var, const at::Tensor& batch_mean,
                                  const at::Tensor& batch_var, const OptTensor& num_batches_tracked, int64_t count,
                                  double momentum, bool cumulative) {
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    update_stats_op().call(running_mean, running_var, batch_mean, batch_var, num_batches_tracked, count, momentum,
                           cumulative);
  }
  torch::autograd::impl::bump_version(running_mean);
  torch::autograd::impl::bump_version(running_var);
}

// ---- pool_linear -------------------------------------------------------------------------------

struct PoolLinear : Function<PoolLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const OptTensor& bias) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = head_op().call(x, weight, bias);
    }
    ctx->save_for_backward({x, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [gx, gw, gb] = head_backward_op().call(grads[0], s[0], s[1]);
    return {gx, gw, ctx->saved_data["has_bias"].toBool() ? gb : at::Tensor()};
  }
};

at::Tensor pool_linear_autograd(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias) {
  if (!needs_autograd(x, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return head_op().call(x, weight, bias);
  }
  return PoolLinear::apply(x, weight, bias);
}

// ---- the backward operators: not differentiable again --------------------------------------------

[[noreturn]] void refuse(const char* op) {
  TORCH_CHECK(false, op, ": double backward (differentiating the backward) is not supported; compute "
              "second-order terms with the plain-PyTorch modules");
}

struct ConvBackwardOnce : Function<ConvBackwardOnce> {
  static variable_list forward(AutogradContext*, const at::Tensor& grad_y, const at::Tensor& y,
                               const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias,
                               const at::Tensor& bn_weight, const OptTensor& conv_out, const at::Tensor& mean,
                               const at::Tensor& var, int64_t stride, int64_t padding, int64_t groups,
                               double eps, bool relu, bool training, bool input_grad, bool param_grads,
                               bool residual_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [a, b, c, d, e, f] = conv_backward_op().call(grad_y, y, x, weight, bias, bn_weight, conv_out, mean,
                                                      var, stride, padding, groups, eps, relu, training,
                                                      input_grad, param_grads, residual_grad);
    return {a, b, c, d, e, f};
  }
  static variable_list backward(AutogradContext*, variable_list) { refuse("conv_bn_act"); }
};

ConvGrads conv_bn_act_backward_autograd(const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& x,
                                        const at::Tensor& weight, const OptTensor& bias,
                                        const at::Tensor& bn_weight, const OptTensor& conv_out,
                                        const at::Tensor& mean, const at::Tensor& var, int64_t stride,
                                        int64_t padding, int64_t groups, double eps, bool relu,
                                        bool training, bool input_grad, bool param_grads, bool residual_grad) {
  if (!needs_autograd(grad_y, y, x, weight, bias, bn_weight, conv_out, mean, var)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return conv_backward_op().call(grad_y, y, x, weight, bias, bn_weight, conv_out, mean, var, stride, padding,
                                   groups, eps, relu, training, input_grad, param_grads, residual_grad);
  }
  const auto g = ConvBackwardOnce::apply(grad_y, y, x, weight, bias, bn_weight, conv_out, mean, var, stride,
                                         padding, groups, eps, relu, training, input_grad, param_grads,
                                         residual_grad);
  return {g[0], g[1], g[2], g[3], g[4], g[5]};
}

struct SEBackwardOnce : Function<SEBackwardOnce> {
  static variable_list forward(AutogradContext*, const at::Tensor& grad_y, const at::Tensor& x,
                               const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                               const at::Tensor& b2) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [a, b, c, d, e] = se_backward_op().call(grad_y, x, w1, b1, w2, b2);
    return {a, b, c, d, e};
  }
  static variable_list backward(AutogradContext*, variable_list) { refuse("squeeze_excite"); }
};

SEGrads squeeze_excite_backward_autograd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w1,
                                         const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
  if (!needs_autograd(grad_y, x, w1, b1, w2, b2)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return se_backward_op().call(grad_y, x, w1, b1, w2, b2);
  }
  const auto g = SEBackwardOnce::apply(grad_y, x, w1, b1, w2, b2);
  return {g[0], g[1], g[2], g[3], g[4]};
}

struct PoolLinearBackwardOnce : Function<PoolLinearBackwardOnce> {
  static variable_list forward(AutogradContext*, const at::Tensor& grad_y, const at::Tensor& x,
                               const at::Tensor& weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [a, b, c] = head_backward_op().call(grad_y, x, weight);
    return {a, b, c};
  }
  static variable_list backward(AutogradContext*, variable_list) { refuse("pool_linear"); }
};

HeadGrads pool_linear_backward_autograd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight) {
  if (!needs_autograd(grad_y, x, weight)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return head_backward_op().call(grad_y, x, weight);
  }
  const auto g = PoolLinearBackwardOnce::apply(grad_y, x, weight);
  return {g[0], g[1], g[2]};
}

}  // namespace
}  // namespace regnet_ext

TORCH_LIBRARY_IMPL(regnet_ext, Autograd, m) {
  m.impl("conv_bn_act_eval", &regnet_ext::conv_bn_act_eval_autograd<true>);
  m.impl("conv_bn_act_eval.uncached", &regnet_ext::conv_bn_act_eval_autograd<false>);
  m.impl("conv_bn_act_train", &regnet_ext::conv_bn_act_train_autograd);
  m.impl("conv_bn_act_backward", &regnet_ext::conv_bn_act_backward_autograd);
  m.impl("squeeze_excite", &regnet_ext::squeeze_excite_autograd);
  m.impl("squeeze_excite_backward", &regnet_ext::squeeze_excite_backward_autograd);
  m.impl("pool_linear", &regnet_ext::pool_linear_autograd);
  m.impl("pool_linear_backward", &regnet_ext::pool_linear_backward_autograd);
}

TORCH_LIBRARY_IMPL(regnet_ext, ADInplaceOrView, m) {
  m.impl("conv_bn_act_update_running_stats", &regnet_ext::update_running_stats_inplace);
}
