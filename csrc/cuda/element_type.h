// Element types the CUDA launchers accept; the host side maps ScalarType onto this so that
// kernel files need no ATen headers.
#pragma once

namespace regnet_ext::cuda {

enum class ElementType { kFloat32, kFloat16, kBFloat16 };

}  // namespace regnet_ext::cuda
