// regnet_ext._C.cpu_conv_autotune_enabled(), .cpu_conv_autotune_records() (excluded as a mask),
// .clear_cpu_conv_autotune(), .cpu_conv_kernel_names(),
// .cpu_conv_autotune_excluded_mask() and .set_cpu_conv_autotune_excluded(mask):
// the autotuner's switch, decisions and exclusions (conv_autotune.h), for
// regnet_ext.ops.cpu_autotune and the benchmarks.
#include <Python.h>

#include "cpu/conv_autotune.h"

namespace regnet_ext::cpu {
namespace {

// Steals the reference to value; false (a Python error set) on failure.
bool set_item(PyObject* dict, const char* key, PyObject* value) {
  if (value == nullptr) return false;
  const int rc = PyDict_SetItemString(dict, key, value);
  Py_DECREF(value);
  return rc == 0;
}

PyObject* record_dict(const ConvAutotuneRecord& r) {
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  const kernels::ConvGeometry& g = r.geometry;
  const std::string_view dtype = c10::getDtypeNames(r.dtype).first;  // torch's name, e.g. "float32"
  // Per candidate, by kernel name: the median, every round's time and page faults.
  PyObject* medians = PyDict_New();
  PyObject* rounds = PyDict_New();
  PyObject* faults = PyDict_New();
  bool ok = medians != nullptr && rounds != nullptr && faults != nullptr;
  for (const auto& c : r.candidates) {
    const char* name = conv_kernel_name(c.kernel);
    PyObject* times = ok ? PyList_New(static_cast<Py_ssize_t>(c.rounds_us.size())) : nullptr;
    PyObject* counts = ok ? PyList_New(static_cast<Py_ssize_t>(c.round_faults.size())) : nullptr;
    ok = ok && times != nullptr && counts != nullptr;
    for (size_t i = 0; ok && i < c.rounds_us.size(); ++i) {
      PyObject* t = PyFloat_FromDouble(c.rounds_us[i]);
      PyObject* f = PyLong_FromLongLong(c.round_faults[i]);
      ok = t != nullptr && f != nullptr;
      if (ok) {  // PyList_SET_ITEM takes the references
        PyList_SET_ITEM(times, static_cast<Py_ssize_t>(i), t);
        PyList_SET_ITEM(counts, static_cast<Py_ssize_t>(i), f);
      } else {
        Py_XDECREF(t);
        Py_XDECREF(f);
      }
    }
    if (!ok) {
      Py_XDECREF(times);
      Py_XDECREF(counts);
      break;
    }
    ok = set_item(medians, name, PyFloat_FromDouble(c.median_us));
    ok = set_item(rounds, name, times) && ok;
    ok = set_item(faults, name, counts) && ok;
  }
  if (!ok) {
    Py_XDECREF(medians);
    Py_XDECREF(rounds);
    Py_XDECREF(faults);
    Py_DECREF(d);
    return nullptr;
  }
  // set_item takes the three references from here on, whether or not it succeeds.
  ok = set_item(d, "median_us", medians);
  ok = set_item(d, "rounds_us", rounds) && ok;
  ok = set_item(d, "round_faults", faults) && ok;
  ok = ok && set_item(d, "pass", PyUnicode_FromString(conv_pass_name(r.pass))) &&
       set_item(d, "dtype", PyUnicode_FromStringAndSize(dtype.data(), static_cast<Py_ssize_t>(dtype.size()))) &&
       set_item(d, "x_shape", Py_BuildValue("(LLLL)", (long long)g.batch, (long long)g.in_c, (long long)g.in_h,
                                            (long long)g.in_w)) &&
       set_item(d, "out_channels", PyLong_FromLongLong(g.out_c)) &&
       set_item(d, "kernel", PyLong_FromLongLong(g.kernel)) && set_item(d, "stride", PyLong_FromLongLong(g.stride)) &&
       set_item(d, "padding", PyLong_FromLongLong(g.padding)) && set_item(d, "groups", PyLong_FromLongLong(g.groups)) &&
       set_item(d, "relu", PyBool_FromLong(r.relu)) && set_item(d, "residual", PyBool_FromLong(r.residual)) &&
       set_item(d, "threads", PyLong_FromLong(r.threads)) && set_item(d, "excluded_mask", PyLong_FromUnsignedLong(r.excluded)) &&
       set_item(d, "chosen", PyUnicode_FromString(conv_kernel_name(r.chosen)));
  if (!ok) {
    Py_DECREF(d);
    return nullptr;
  }
  return d;
}

}  // namespace

PyObject* conv_autotune_records_py(PyObject*, PyObject*) {
  const std::vector<ConvAutotuneRecord> records = ConvAutotuneTable::instance().records();
  PyObject* list = PyList_New(0);
  if (list == nullptr) return nullptr;
  for (const ConvAutotuneRecord& r : records) {
    PyObject* d = record_dict(r);
    if (d == nullptr || PyList_Append(list, d) != 0) {
      Py_XDECREF(d);
      Py_DECREF(list);
      return nullptr;
    }
    Py_DECREF(d);
  }
  return list;
}

PyObject* conv_autotune_enabled_py(PyObject*, PyObject*) { return PyBool_FromLong(conv_autotune_enabled()); }

PyObject* clear_conv_autotune_py(PyObject*, PyObject*) {
  ConvAutotuneTable::instance().clear();
  Py_RETURN_NONE;
}

// Every kernel's name, indexed by its ConvKernel value (the bit of set_cpu_conv_autotune_excluded).
PyObject* conv_kernel_names_py(PyObject*, PyObject*) {
  PyObject* names = PyTuple_New(kConvKernelCount);
  for (int k = 0; names != nullptr && k < kConvKernelCount; ++k) {
    PyObject* name = PyUnicode_FromString(conv_kernel_name(static_cast<ConvKernel>(k)));
    if (name == nullptr) {
      Py_CLEAR(names);
      break;
    }
    PyTuple_SET_ITEM(names, k, name);
  }
  return names;
}

PyObject* conv_autotune_excluded_mask_py(PyObject*, PyObject*) {
  return PyLong_FromUnsignedLong(excluded_conv_kernels().load());
}

// Sets excluded_conv_kernels() to mask (an int, a bit per ConvKernel) and returns the one before.
PyObject* set_conv_autotune_excluded_py(PyObject*, PyObject* mask) {
  const unsigned long long value = PyLong_AsUnsignedLongLong(mask);
  if (value == static_cast<unsigned long long>(-1) && PyErr_Occurred()) return nullptr;
  if (value >> kConvKernelCount) {
    PyErr_Format(PyExc_ValueError, "set_cpu_conv_autotune_excluded: mask %llu has bits beyond the %d kernels", value,
                 kConvKernelCount);
    return nullptr;
  }
  return PyLong_FromUnsignedLong(excluded_conv_kernels().exchange(static_cast<uint32_t>(value)));
}

}  // namespace regnet_ext::cpu
