// ScalarType -> ElementType for the CUDA launchers' host side (element_type.h stays free of ATen
// so that kernel files can include it).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "cuda/element_type.h"

namespace regnet_ext::cuda {

inline ElementType element_type_of(const at::Tensor& x, const char* op) {
  switch (x.scalar_type()) {
    case at::kFloat: return ElementType::kFloat32;
    case at::kHalf: return ElementType::kFloat16;
    case at::kBFloat16: return ElementType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": x must be float32, float16 or bfloat16 on CUDA (float64 runs on the CPU only), got ",
                  x.scalar_type());
  }
}

}  // namespace regnet_ext::cuda
