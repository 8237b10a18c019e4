// Python access to the folded-weight cache's contents, for tests: which call shapes hold a
// packed weight (csrc/cpu/folded_weight_cache.h).
#include <Python.h>

#include "cpu/folded_weight_cache.h"

namespace regnet_ext::cpu {

// [(layout, (in_c, in_h, in_w, stride, padding, groups, batch)), ...], oldest first; layout 0 is
// oneDNN's (the only one packed for a batch size; the others have batch 0).
PyObject* cpu_weight_cache_shapes_py(PyObject*, PyObject*) {
  const auto shapes = FoldedWeightCache::instance().shapes();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(shapes.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto& [layout, shape] = shapes[i];
    PyObject* dims = PyTuple_New(static_cast<Py_ssize_t>(shape.size()));
    if (dims == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    for (size_t j = 0; j < shape.size(); ++j) PyTuple_SET_ITEM(dims, j, PyLong_FromLongLong(shape[j]));
    PyObject* entry = Py_BuildValue("(iN)", layout, dims);
    if (entry == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, i, entry);
  }
  return list;
}

}  // namespace regnet_ext::cpu
