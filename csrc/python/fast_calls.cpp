// A fast way in from Python for the per-layer calls of the fused modules and of
// regnet_ext.ops.conv_bn_act: conv_bn_act_eval and conv_bn_act_train called through the
// dispatcher's typed (unboxed) entry instead of torch.ops' boxed one.
//
// Why: torch.ops.regnet_ext.conv_bn_act_eval(...) converts each of its 13 arguments to an
// IValue against the schema before the dispatcher runs: 11.9 us a call on a 4-pixel input on
// the 2-core Ice Lake VM against 8.9 us through this entry (F.conv2d: 6.0 us). A fused
// RegNetX-400MF forward makes 71 such calls; docs/fused_inference.md says what it saved there.
//
// The call below is the dispatcher's own, so autograd (csrc/autograd.cpp), autocast,
// TorchDispatchModes, the profiler's RecordFunction and inference mode behave as through
// torch.ops. What only torch.ops' Python path does is left to it: where a tensor argument is a
// subclass with __torch_function__ (nn.Parameter has none), a torch function mode is on, or an
// argument is not of the exact Python type this parser takes, the function returns
// NotImplemented and the caller goes through torch.ops (which then raises its usual errors for
// bad arguments). Not for traced code: torch.compile must see torch.ops' call.
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/utils/wrap_outputs.h>

#include <optional>
#include <tuple>
#include <utility>

#include "op_signatures.h"

namespace regnet_ext {
namespace {

// torch.nn.Parameter: a Tensor subclass whose __torch_function__ is disabled.
PyTypeObject* parameter_type() {
  static PyTypeObject* type = [] {
    PyObject* module = PyImport_ImportModule("torch.nn.parameter");
    PyObject* cls = module ? PyObject_GetAttrString(module, "Parameter") : nullptr;
    Py_XDECREF(module);
    if (!cls) throw python_error();
    return reinterpret_cast<PyTypeObject*>(cls);  // kept for the process
  }();
  return type;
}

bool plain_tensor(PyObject* obj) {
  return THPVariable_CheckExact(obj) || Py_TYPE(obj) == parameter_type();
}

// Arg<T>: one argument of C++ type T parsed from Python; parse() is false where the object is
// not of the exact type it takes.
template <typename T>
struct Arg;

template <>
struct Arg<const at::Tensor&> {
  const at::Tensor* value = nullptr;
  bool parse(PyObject* obj) {
    if (!plain_tensor(obj)) return false;
    value = &THPVariable_Unpack(obj);
    return true;
  }
  const at::Tensor& get() const { return *value; }
};

template <>
struct Arg<const OptTensor&> {
  OptTensor value;
  bool parse(PyObject* obj) {
    if (obj == Py_None) return true;
    if (!plain_tensor(obj)) return false;
    value = THPVariable_Unpack(obj);
    return true;
  }
  const OptTensor& get() const { return value; }
};

template <>
struct Arg<int64_t> {
  int64_t value = 0;
  bool parse(PyObject* obj) {
    if (!PyLong_CheckExact(obj)) return false;
    int overflow = 0;
    value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    return overflow == 0 && !(value == -1 && PyErr_Occurred());
  }
  int64_t get() const { return value; }
};

template <>
struct Arg<double> {
  double value = 0;
  bool parse(PyObject* obj) {
    if (!PyFloat_CheckExact(obj)) return false;
    value = PyFloat_AS_DOUBLE(obj);
    return true;
  }
  double get() const { return value; }
};

template <>
struct Arg<bool> {
  bool value = false;
  bool parse(PyObject* obj) {
    if (!PyBool_Check(obj)) return false;
    value = obj == Py_True;
    return true;
  }
  bool get() const { return value; }
};

// op(*args) through the typed handle, or NotImplemented (see the top of the file).
template <typename Ret, typename... Args>
PyObject* typed_call(const c10::TypedOperatorHandle<Ret(Args...)>& op, const char* name, PyObject* const* args,
                     Py_ssize_t nargs) {
  constexpr Py_ssize_t kArgs = sizeof...(Args);
  if (nargs != kArgs) {
    PyErr_Format(PyExc_TypeError, "%s: takes %zd positional arguments, got %zd", name, kArgs, nargs);
    return nullptr;
  }
  std::tuple<Arg<Args>...> parsed;
  const bool ok = std::apply(
      [&](auto&... a) {
        Py_ssize_t i = 0;
        return (a.parse(args[i++]) && ...);
      },
      parsed);
  if (PyErr_Occurred()) return nullptr;
  if (!ok || at::impl::torch_function_mode_enabled()) Py_RETURN_NOTIMPLEMENTED;
  Ret result = [&] {
    pybind11::gil_scoped_release no_gil;
    return std::apply([&](const auto&... a) { return op.call(a.get()...); }, parsed);
  }();
  return torch::autograd::utils::wrap(std::move(result));  // a Tensor, or a tuple of them
}

}  // namespace

// conv_bn_act_eval_call(*args): the schema's 13 arguments, positional.
PyObject* conv_bn_act_eval_call_py(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op = find_op<EvalSignature>("regnet_ext::conv_bn_act_eval");
  return typed_call(op, "conv_bn_act_eval_call", args, nargs);
  END_HANDLE_TH_ERRORS
}

// conv_bn_act_train_call(*args): the schema's 11 arguments, positional; a tuple of its 4 outputs.
PyObject* conv_bn_act_train_call_py(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op = find_op<TrainSignature>("regnet_ext::conv_bn_act_train");
  return typed_call(op, "conv_bn_act_train_call", args, nargs);
  END_HANDLE_TH_ERRORS
}

}  // namespace regnet_ext
