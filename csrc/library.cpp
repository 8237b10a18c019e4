// Every operator schema of the regnet_ext namespace, in one place.
// Backends register implementations in their own files (csrc/cpu/*.cpp, csrc/cuda/*.cu) with
// TORCH_LIBRARY_IMPL; fake kernels and autograd are registered from Python (regnet_ext/ops).
#include <Python.h>
#include <torch/library.h>

// Importing regnet_ext._C runs the static registrations below; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(regnet_ext, m) {
  // ---- conv_bn_act ------------------------------------------------------------------------

  // ---- squeeze_excite ---------------------------------------------------------------------
}
