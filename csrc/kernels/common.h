// Definitions shared by every kernel header: compiled by the host compiler for the CPU
// implementation and by nvcc for the CUDA one, so the same arithmetic runs on both.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define REGNET_HD __host__ __device__ __forceinline__
#else
#define REGNET_HD inline
#endif

// Full-unroll hint for the short fixed-trip loops of register tiles, so that their accumulators
// live in registers (GCC otherwise keeps an indexed accumulator array in memory: one store per
// FMA). nvcc's and GCC's spellings.
#if defined(__CUDACC__) || defined(__HIPCC__) || defined(__clang__)
#define REGNET_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define REGNET_UNROLL _Pragma("GCC unroll 16")
#else
#define REGNET_UNROLL
#endif

namespace regnet_ext::kernels {

// Half-precision inputs accumulate in float; float and double accumulate in themselves.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

}  // namespace regnet_ext::kernels
