// Small device helpers shared by the CUDA kernels: the launch check, 16-byte vector loads/stores
// of any element type converted to/from float, and the per-dtype dispatch of launchers.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/element_type.h"

namespace regnet_ext::cuda {

// Every launch is followed by this: reports the launch error (bad config, no kernel image for
// this GPU) at the call site without synchronising the device.
#define REGNET_CUDA_CHECK_LAUNCH() C10_CUDA_KERNEL_LAUNCH_CHECK()

// Loads 8 consecutive elements as float, in 16-byte transactions (T = float: 2, 16-bit: 1).
template <typename T>
__device__ __forceinline__ void load8_as_float(const T* src, float (&out)[8]) {
  static_assert((8 * sizeof(T)) % 16 == 0, "8 elements must fill whole 16-byte words");
  alignas(16) T buf[8];
#pragma unroll
  for (int i = 0; i < int(8 * sizeof(T) / 16); ++i)
    reinterpret_cast<uint4*>(buf)[i] = __ldg(reinterpret_cast<const uint4*>(src) + i);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = static_cast<float>(buf[i]);
}

// Stores 4 consecutive elements in one transaction (8 bytes for 16-bit types, 16 for float).
template <typename T>
__device__ __forceinline__ void store4_from_float(T* dst, const float (&v)[4]) {
  alignas(4 * sizeof(T)) T buf[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) buf[i] = static_cast<T>(v[i]);
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(buf);
  } else {
    *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(buf);
  }
}

template <typename T>
__device__ __forceinline__ void load4_as_float(const T* src, float (&out)[4]) {
  alignas(4 * sizeof(T)) T buf[4];
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<uint4*>(buf) = __ldg(reinterpret_cast<const uint4*>(src));
  } else {
    *reinterpret_cast<uint2*>(buf) = __ldg(reinterpret_cast<const uint2*>(src));
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = static_cast<float>(buf[i]);
}


// Calls f(T{}) with T the C++ type of `dtype`, so a launcher instantiates a kernel per type.
template <typename F>
void dispatch_element_type(ElementType dtype, F&& f) {
  switch (dtype) {
    case ElementType::kFloat32: f(float{}); break;
    case ElementType::kFloat16: f(c10::Half{}); break;
    case ElementType::kBFloat16: f(c10::BFloat16{}); break;
  }
}

// Blocks for a grid-stride loop over `work` items (capped: the loop covers the rest).
inline unsigned grid_stride_blocks(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return unsigned(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

}  // namespace regnet_ext::cuda
