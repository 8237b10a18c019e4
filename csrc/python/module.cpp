// The Python module regnet_ext._C: PyInit__C and the functions and constants it holds.
#include <Python.h>

// Importing regnet_ext._C runs the static registrations of the operators (csrc/library.cpp and
// the backends). The module holds constants:
// `openmp`, whether this build compiled ATen's at::parallel_for with OpenMP (without it, every
// CPU pass of ours silently runs on one thread), and `narrow_group_kernel` / `winograd_kernel` /
// `narrow_group_bf16_kernel`, whether it has our grouped convs (csrc/cpu/grouped_conv_*.h: the
// narrow-group one with AVX-512 or AVX2+FMA, Winograd with AVX-512, the bfloat16 one with
// AVX512-BF16), and `gemm_tiles_kernel`, our register tiles for 1x1 convs and stems
// (csrc/cpu/gemm_1x1_tiles.h, stem_conv_tiles.h, AVX-512);
// six functions of the CPU conv autotuner (csrc/python/conv_autotune.cpp); one
// listing the folded-weight cache's shapes (csrc/python/folded_weight_cache.cpp); and
// conv_bn_act_eval_call and conv_bn_act_train_call, the operators' fast entries from Python
// (csrc/python/fast_calls.cpp).
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
       "take it (csrc/python/fast_calls.cpp)."},
      {"conv_bn_act_train_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                                     regnet_ext::conv_bn_act_train_call_py)),
       METH_FASTCALL,
       "conv_bn_act_train through the dispatcher's typed call; NotImplemented where torch.ops must "
       "take it (csrc/python/fast_calls.cpp)."},
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
