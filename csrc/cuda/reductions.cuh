// Device glue for the reduction schedules in reduction_schedule.h: warp shuffles walk the butterfly,
// shared memory carries the per-warp slots. The combine step is always a shared REGNET_HD function.
#pragma once

#include <cuda_runtime.h>

#include "cuda/reduction_schedule.h"

namespace regnet_ext::cuda {

// Shuffles any trivially copyable value made of 4-byte words (float, Moments, ...).
template <typename T>
__device__ __forceinline__ T shuffle_xor(const T& value, int offset) {
  static_assert(sizeof(T) % 4 == 0, "shuffle_xor moves 4-byte words");
  T out;
  const auto* src = reinterpret_cast<const unsigned*>(&value);
  auto* dst = reinterpret_cast<unsigned*>(&out);
#pragma unroll
  for (int i = 0; i < int(sizeof(T) / 4); ++i) dst[i] = __shfl_xor_sync(0xffffffffu, src[i], offset);
  return out;
}

// Butterfly over the lanes that share lane % keep (keep == 1: whole warp). All 32 lanes must call it.
template <int kKeep, typename T, typename Combine>
__device__ __forceinline__ T warp_allreduce(T value, Combine combine) {
#pragma unroll
  for (int step = 0; step < butterfly_steps(kKeep); ++step)
    value = combine(value, shuffle_xor(value, butterfly_offset(step)));
  return value;
}

// Whole-block reduction; the result is valid in warp 0. `slots` holds >= 32 values. Ends with a
// barrier-free warp 0, so callers that reuse `slots` must __syncthreads() first.
template <typename T, typename Combine>
__device__ __forceinline__ T block_allreduce(T value, T identity, T* slots, Combine combine) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  value = warp_allreduce<1>(value, combine);
  if (lane == 0) slots[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = block_phase2_has_slot(lane, num_warps) ? slots[lane] : identity;
    value = warp_allreduce<1>(value, combine);
  }
  return value;
}

// Per-column reduction (column = threadIdx.x % kColumns); the column's total is valid in thread
// `column` of warp 0. `slots` holds num_warps * kColumns values.
template <int kColumns, typename T, typename Combine>
__device__ __forceinline__ T column_allreduce(T value, T* slots, Combine combine) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  value = warp_allreduce<kColumns>(value, combine);
  if (lane < kColumns) slots[column_slot(warp, lane, kColumns)] = value;
  __syncthreads();
  if (warp == 0 && lane < kColumns) {
    value = slots[column_slot(0, lane, kColumns)];
    for (int w = 1; w < num_warps; ++w) value = combine(value, slots[column_slot(w, lane, kColumns)]);
  }
  return value;
}

}  // namespace regnet_ext::cuda
