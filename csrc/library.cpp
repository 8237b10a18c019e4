// Every operator schema of the regnet_ext namespace, in one place.
// Backends register implementations in their own files (csrc/cpu/*.cpp, csrc/cuda/*.cu) with
// TORCH_LIBRARY_IMPL, autograd in csrc/autograd.cpp; fake kernels are registered from Python
// (regnet_ext/ops). No Python here: these schemas and the kernels are also the Python-free
// library that C++ programs link (CMakeLists.txt, target regnet_ext_ops); the Python module is
// csrc/python/.
#include <torch/library.h>

TORCH_LIBRARY(regnet_ext, m) {
  // ---- conv_bn_act ------------------------------------------------------------------------
  // y = act(BN(conv2d(x, weight, bias; stride, padding, groups)) + residual). Split in
  // functional operators because autograd and torch.compile handle them best:
  //  * eval: BN with running statistics, folded into the conv.
  //  * train: batch statistics; returns y, the conv output z (kept for the backward's x-hat)
  //    and the batch mean and biased variance (accumulation dtype: float32 for 16-bit inputs).
  //  * update_running_stats: the only mutating operator, called after train under no_grad
  //    (nn.BatchNorm2d's update; cumulative average when `cumulative`, reading
  //    num_batches_tracked already incremented for this batch).
  //  * backward: gradients for x, weight, bias, bn_weight, bn_bias, residual. `mean`/`var` are
  //    the running statistics in eval and the batch statistics in training; `conv_out` is z
  //    (training only). Empty tensors stand for gradients not asked for (input_grad=False,
  //    param_grads=False, residual_grad=False) and for bias's when there is no bias; without a
  //    residual gradient the training backward reuses ReLU's gradient buffer for dz (one
  //    activation-sized allocation less per layer). Its own backward is refused.
  m.def(
      "conv_bn_act_eval(Tensor x, Tensor weight, Tensor? bias, Tensor bn_weight, Tensor bn_bias, "
      "Tensor running_mean, Tensor running_var, Tensor? residual, int stride, int padding, "
      "int groups, float eps, bool relu) -> Tensor");
  // The same without the CPU's folded-weight cache (csrc/cpu/folded_weight_cache.h), for graphs
  // that torch.compile traces with weights computed in the graph (autocast's casts): the compiled
  // code reuses such a tensor's buffer for another layer's values without bumping its version, so
  // a cached fold would be another layer's.
  m.def(
      "conv_bn_act_eval.uncached(Tensor x, Tensor weight, Tensor? bias, Tensor bn_weight, "
      "Tensor bn_bias, Tensor running_mean, Tensor running_var, Tensor? residual, int stride, "
      "int padding, int groups, float eps, bool relu) -> Tensor");
  m.def(
      "conv_bn_act_train(Tensor x, Tensor weight, Tensor? bias, Tensor bn_weight, "
      "Tensor bn_bias, Tensor? residual, int stride, int padding, int groups, float eps, "
      "bool relu) -> (Tensor y, Tensor conv_out, Tensor mean, Tensor var)");
  m.def(
      "conv_bn_act_update_running_stats(Tensor(a!) running_mean, Tensor(b!) running_var, "
      "Tensor batch_mean, Tensor batch_var, Tensor? num_batches_tracked, int count, "
      "float momentum, bool cumulative) -> ()");
  m.def(
      "conv_bn_act_backward(Tensor grad_y, Tensor y, Tensor x, Tensor weight, Tensor? bias, "
      "Tensor bn_weight, Tensor? conv_out, Tensor mean, Tensor var, int stride, int padding, "
      "int groups, float eps, bool relu, bool training, bool input_grad, bool param_grads, "
      "bool residual_grad=True) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_bn_weight, "
      "Tensor grad_bn_bias, Tensor grad_residual)");

  // ---- conv_pair_relu (CPU inference) -----------------------------------------------------
  // A bottleneck's first two convs, BN folded by the caller: y = relu(conv2d(relu(conv2d(x,
  // weight_a [C, C_in, 1, 1]) + bias_a), weight_b [C, C/groups, 3, 3], stride, padding 1, groups)
  // + bias_b), float32, 8 or 16 channels per group; computed band by band so that the 1x1
  // conv's output never leaves the cache (csrc/cpu/conv_pair.cpp). No autograd.
  m.def(
      "conv_pair_relu(Tensor x, Tensor weight_a, Tensor bias_a, Tensor weight_b, Tensor bias_b, "
      "int stride, int groups) -> Tensor");

  // ---- pool_linear ------------------------------------------------------------------------
  // A classifier head: y = linear(mean_hw(x), weight [classes, C], bias [classes]), float32 or
  // float64, CPU only (csrc/cpu/pool_linear.cpp says why). The backward recomputes the pooled
  // means from x and always returns all three gradients (bias's is sum_n grad_y).
  m.def("pool_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def(
      "pool_linear_backward(Tensor grad_y, Tensor x, Tensor weight) -> (Tensor grad_x, "
      "Tensor grad_weight, Tensor grad_bias)");

  // ---- squeeze_excite ---------------------------------------------------------------------
  // y = x * sigmoid(w2 . relu(w1 . mean_hw(x) + b1) + b2); w1 [C_se, C] or [C_se, C, 1, 1],
  // w2 [C, C_se] or [C, C_se, 1, 1]. The backward recomputes the pooled means from x.
  m.def("squeeze_excite(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> Tensor");
  // The same in place, for inference on the CPU (a fused block's lean path, whose conv output
  // nobody else holds); no autograd.
  m.def("squeeze_excite_(Tensor(a!) x, Tensor w1, Tensor b1, Tensor w2, Tensor b2) -> ()");
  m.def(
      "squeeze_excite_backward(Tensor grad_y, Tensor x, Tensor w1, Tensor b1, Tensor w2, "
      "Tensor b2) -> (Tensor grad_x, Tensor grad_w1, Tensor grad_b1, Tensor grad_w2, "
      "Tensor grad_b2)");
}
