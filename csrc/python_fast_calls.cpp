// A fast way in from Python for the fused modules' CPU inference: conv_bn_act_eval called
// through the dispatcher's typed (unboxed) entry instead of torch.ops' boxed one.
//
// Why: torch.ops.regnet_ext.conv_bn_act_eval(...) converts each of its 13 arguments to an
// IValue against the schema before the dispatcher runs: 11.9 us a call on a 4-pixel input on
// the 2-core Ice Lake VM against 8.9 us through this entry (F.conv2d: 6.0 us). A fused
// RegNetX-400MF forward makes 71 such calls; README, fuse(), says what it saved there.
//
// The call below is the dispatcher's own, so autocast, TorchDispatchModes, the profiler's
// RecordFunction and inference mode behave as through torch.ops. What only torch.ops' Python
// path does is left to it: where a tensor argument is a subclass with __torch_function__
// (nn.Parameter has none), a torch function mode is on, or an argument is not of the exact
// Python type this parser takes, the function returns NotImplemented and the caller goes
// through torch.ops (which then raises its usual errors for bad arguments).
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>

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

// Each parser returns false where the argument is not of the exact type it takes.
bool parse(PyObject* obj, const at::Tensor*& out) {
  if (!plain_tensor(obj)) return false;
  out = &THPVariable_Unpack(obj);
  return true;
}

bool parse(PyObject* obj, std::optional<at::Tensor>& out) {
  if (obj == Py_None) return true;
  if (!plain_tensor(obj)) return false;
  out = THPVariable_Unpack(obj);
  return true;
}

bool parse(PyObject* obj, int64_t& out) {
  if (!PyLong_CheckExact(obj)) return false;
  int overflow = 0;
  out = PyLong_AsLongLongAndOverflow(obj, &overflow);
  return overflow == 0 && !(out == -1 && PyErr_Occurred());
}

bool parse(PyObject* obj, double& out) {
  if (!PyFloat_CheckExact(obj)) return false;
  out = PyFloat_AS_DOUBLE(obj);
  return true;
}

bool parse(PyObject* obj, bool& out) {
  if (!PyBool_Check(obj)) return false;
  out = obj == Py_True;
  return true;
}

}  // namespace

namespace cpu {

// conv_bn_act_eval_call(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
// residual, stride, padding, groups, eps, relu): the schema's arguments, positional.
PyObject* conv_bn_act_eval_call_py(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("regnet_ext::conv_bn_act_eval", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, int64_t, int64_t, int64_t, double, bool)>();
  if (nargs != 13) {
    PyErr_Format(PyExc_TypeError, "conv_bn_act_eval_call: takes 13 positional arguments, got %zd", nargs);
    return nullptr;
  }
  const at::Tensor *x = nullptr, *weight = nullptr, *bn_weight = nullptr, *bn_bias = nullptr, *mean = nullptr,
                   *var = nullptr;
  std::optional<at::Tensor> bias, residual;
  int64_t stride = 0, padding = 0, groups = 0;
  double eps = 0;
  bool relu = false;
  const bool parsed = parse(args[0], x) && parse(args[1], weight) && parse(args[2], bias) &&
                      parse(args[3], bn_weight) && parse(args[4], bn_bias) && parse(args[5], mean) &&
                      parse(args[6], var) && parse(args[7], residual) && parse(args[8], stride) &&
                      parse(args[9], padding) && parse(args[10], groups) && parse(args[11], eps) &&
                      parse(args[12], relu);
  if (PyErr_Occurred()) return nullptr;
  if (!parsed || at::impl::torch_function_mode_enabled()) Py_RETURN_NOTIMPLEMENTED;
  at::Tensor y;
  {
    pybind11::gil_scoped_release no_gil;
    y = op.call(*x, *weight, bias, *bn_weight, *bn_bias, *mean, *var, residual, stride, padding, groups, eps, relu);
  }
  return THPVariable_Wrap(std::move(y));
  END_HANDLE_TH_ERRORS
}

}  // namespace cpu
}  // namespace regnet_ext
