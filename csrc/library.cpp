// Every operator schema of the regnet_ext namespace, in one place.
// Backends register implementations in their own files (csrc/cpu/*.cpp, csrc/cuda/*.cu) with
// TORCH_LIBRARY_IMPL, autograd in csrc/autograd.cpp; fake kernels are registered from Python
// (regnet_ext/ops).
#include <Python.h>
#include <torch/library.h>

// Importing regnet_ext._C runs the static registrations below. The module holds constants:
// `openmp`, whether this build compiled ATen's at::parallel_for with OpenMP (without it, every
// CPU pass of ours silently runs on one thread), and `narrow_group_kernel` / `winograd_kernel` /
// `narrow_group_bf16_kernel`, whether it has our grouped convs (csrc/cpu/grouped_conv_*.h: the
// narrow-group one with AVX-512 or AVX2+FMA, Winograd with AVX-512, the bfloat16 one with
// AVX512-BF16), and `gemm_tiles_kernel`, our register tiles for 1x1 convs and stems
// (csrc/cpu/gemm_1x1_tiles.h, stem_conv_tiles.h, AVX-512);
// six functions of the CPU conv autotuner (csrc/cpu/conv_autotune.cpp); one
// listing the folded-weight cache's shapes (csrc/cpu/folded_weight_cache.cpp); and
// conv_bn_act_eval_call and conv_bn_act_train_call, the operators' fast entries from Python
// (csrc/python_fast_calls.cpp).
namespace regnet_ext::cpu {
PyObject* conv_autotune_enabled_py(PyObject*, PyObject*);
PyObject* conv_autotune_records_py(PyObject*, PyObject*);
PyObject* clear_conv_autotune_py(PyObject*, PyObject*);
PyObject* conv_kernel_names_py(PyObject*, PyObject*);
PyObject* conv_autotune_excluded_mask_py(PyObject*, PyObject*);
PyObject* set_conv_autotune_excluded_py(PyObject*, PyObject*);
PyObject* cpu_weight_cache_shapes_py(PyObject*, PyObject*);
}  // namespace regnet_ext::cpu
namespace regnet_ext {
PyObject* conv_bn_act_eval_call_py(PyObject*, PyObject* const*, Py_ssize_t);
PyObject* conv_bn_act_train_call_py(PyObject*, PyObject* const*, Py_ssize_t);
}  // namespace regnet_ext

extern "C" PyObject* PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"cpu_conv_autotune_enabled", regnet_ext::cpu::conv_autotune_enabled_py, METH_NOARGS,
       "Whether the CPU conv autotuner times a call shape it has not seen (its switches, read now)."},
      {"cpu_conv_autotune_records", regnet_ext::cpu::conv_autotune_records_py, METH_NOARGS,
       "The CPU conv autotuner's decisions so far: a list of dicts."},
      {"clear_cpu_conv_autotune", regnet_ext::cpu::clear_conv_autotune_py, METH_NOARGS,
       "Forgets the CPU conv autotuner's decisions (the next call of each shape times again)."},
      {"cpu_conv_kernel_names", regnet_ext::cpu::conv_kernel_names_py, METH_NOARGS,
       "The CPU conv kernels' names, indexed by their bit in set_cpu_conv_autotune_excluded's mask."},
      {"cpu_conv_autotune_excluded_mask", regnet_ext::cpu::conv_autotune_excluded_mask_py, METH_NOARGS,
       "The mask of kernels the CPU conv autotuner leaves out now."},
      {"set_cpu_conv_autotune_excluded", regnet_ext::cpu::set_conv_autotune_excluded_py, METH_O,
       "Sets the mask of kernels the CPU conv autotuner leaves out; returns the previous mask."},
      {"cpu_weight_cache_shapes", regnet_ext::cpu::cpu_weight_cache_shapes_py, METH_NOARGS,
       "(layout, call shape) of each folded weight the CPU eval operator keeps packed (for tests)."},
      {"conv_bn_act_eval_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                                    regnet_ext::conv_bn_act_eval_call_py)),
       METH_FASTCALL,
       "conv_bn_act_eval through the dispatcher's typed call; NotImplemented where torch.ops must "
       "take it (csrc/python_fast_calls.cpp)."},
      {"conv_bn_act_train_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                                     regnet_ext::conv_bn_act_train_call_py)),
       METH_FASTCALL,
       "conv_bn_act_train through the dispatcher's typed call; NotImplemented where torch.ops must "
       "take it (csrc/python_fast_calls.cpp)."},
      {nullptr, nullptr, 0, nullptr}};
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  PyObject* module = PyModule_Create(&module_def);
#ifdef _OPENMP
  constexpr long kOpenMP = 1;
#else
  constexpr long kOpenMP = 0;
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  constexpr long kNarrowKernel = 1;  // grouped_conv_narrow.h
#else
  constexpr long kNarrowKernel = 0;
#endif
#if defined(__AVX512F__)
  constexpr long kWinogradKernel = 1;  // grouped_conv_winograd.h
  constexpr long kGemmTilesKernel = 1;  // gemm_1x1_tiles.h
#else
  constexpr long kWinogradKernel = 0;
  constexpr long kGemmTilesKernel = 0;
#endif
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  constexpr long kBf16Kernel = 1;  // grouped_conv_narrow_bf16.h
#else
  constexpr long kBf16Kernel = 0;
#endif
  if (module && (PyModule_AddIntConstant(module, "openmp", kOpenMP) != 0 ||
                 PyModule_AddIntConstant(module, "narrow_group_kernel", kNarrowKernel) != 0 ||
                 PyModule_AddIntConstant(module, "narrow_group_bf16_kernel", kBf16Kernel) != 0 ||
                 PyModule_AddIntConstant(module, "winograd_kernel", kWinogradKernel) != 0 ||
                 PyModule_AddIntConstant(module, "gemm_tiles_kernel", kGemmTilesKernel) != 0)) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

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
