// The C++ signatures of the conv_bn_act operators' schemas (csrc/library.cpp) and the lookup of
// their typed dispatcher handles, for the code that calls them through the dispatcher
// (csrc/autograd.cpp, csrc/python/fast_calls.cpp).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace regnet_ext {

using OptTensor = std::optional<at::Tensor>;

using EvalSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                                 int64_t, int64_t, int64_t, double, bool);
using TrainSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&, const at::Tensor&,
    const OptTensor&, int64_t, int64_t, int64_t, double, bool);

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name, const char* overload = "") {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).typed<Signature>();
}

}  // namespace regnet_ext
