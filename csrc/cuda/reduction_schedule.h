// The schedules of the CUDA kernels' warp and block reductions, written once as REGNET_HD step
// functions. The device glue (reductions.cuh) walks them with warp shuffles and shared memory; the
// host replays below walk the same steps with lanes as an array and barriers as loop boundaries,
// so tests/test_reduction_schedules.py checks the GPU's reduction order on the CPU.
#pragma once

#include "kernels/common.h"

namespace regnet_ext::cuda {

inline constexpr int kWarpSize = 32;

// Butterfly (xor) reduction: at step s a lane combines its value with lane ^ (16 >> s). Running the
// steps whose offset is >= keep reduces over the lanes that share `lane % keep`; keep == 1 is a
// full all-reduce. Every participating lane ends with the same set of inputs combined.
REGNET_HD constexpr int butterfly_offset(int step) { return (kWarpSize / 2) >> step; }
REGNET_HD constexpr int butterfly_partner(int lane, int step) { return lane ^ butterfly_offset(step); }
REGNET_HD constexpr int butterfly_steps(int keep) {
  int steps = 0;
  for (int offset = kWarpSize / 2; offset >= keep; offset >>= 1) ++steps;
  return steps;
}

// Block all-reduce of one value per thread (blockDim a multiple of 32): phase 1 reduces each warp;
// lane 0 of warp w writes slot w; barrier; phase 2: warp 0's lane l takes slot l if l < num_warps
// (else the identity) and reduces again. The total is valid in warp 0.
REGNET_HD constexpr bool block_phase2_has_slot(int lane, int num_warps) { return lane < num_warps; }

// Per-column reduction of a thread tile laid out as columns x rows (column = threadIdx.x % columns,
// columns a power of two <= 32): phase 1 is the butterfly with keep = columns (reduces the rows
// inside a warp); lanes [0, columns) of each warp write slot [warp][column]; barrier; thread
// `column` of warp 0 then folds slots warp 0, 1, ..., num_warps-1 in that order.
REGNET_HD constexpr int column_slot(int warp, int column, int columns) { return warp * columns + column; }

// Host replay of warp_allreduce (reductions.cuh): lanes[] are the 32 lanes' values.
template <typename T, typename Combine>
inline void replay_warp_allreduce(T* lanes, int keep, Combine combine) {
  for (int step = 0; step < butterfly_steps(keep); ++step) {
    T before[kWarpSize];
    for (int lane = 0; lane < kWarpSize; ++lane) before[lane] = lanes[lane];  // shuffles read old values
    for (int lane = 0; lane < kWarpSize; ++lane)
      lanes[lane] = combine(before[lane], before[butterfly_partner(lane, step)]);
  }
}

// Host replay of block_allreduce: values[] holds one value per thread; returns warp 0's result.
template <typename T, typename Combine>
inline T replay_block_allreduce(T* values, int block_threads, T identity, Combine combine) {
  const int num_warps = block_threads / kWarpSize;
  T slots[kWarpSize];
  for (int warp = 0; warp < num_warps; ++warp) {
    replay_warp_allreduce(values + warp * kWarpSize, 1, combine);
    slots[warp] = values[warp * kWarpSize];  // lane 0 writes its warp's slot
  }
  // barrier
  T lanes[kWarpSize];
  for (int lane = 0; lane < kWarpSize; ++lane)
    lanes[lane] = block_phase2_has_slot(lane, num_warps) ? slots[lane] : identity;
  replay_warp_allreduce(lanes, 1, combine);
  return lanes[0];
}

// Host replay of column_allreduce: values[] holds one value per thread (thread = warp*32 + lane,
// column = lane % columns); out[column] receives what thread `column` of warp 0 holds at the end.
template <typename T, typename Combine>
inline void replay_column_allreduce(T* values, int block_threads, int columns, T* out, Combine combine) {
  const int num_warps = block_threads / kWarpSize;
  T slots[kWarpSize * kWarpSize];
  for (int warp = 0; warp < num_warps; ++warp) {
    replay_warp_allreduce(values + warp * kWarpSize, columns, combine);
    for (int column = 0; column < columns; ++column)
      slots[column_slot(warp, column, columns)] = values[warp * kWarpSize + column];
  }
  // barrier
  for (int column = 0; column < columns; ++column) {
    T total = slots[column_slot(0, column, columns)];
    for (int warp = 1; warp < num_warps; ++warp) total = combine(total, slots[column_slot(warp, column, columns)]);
    out[column] = total;
  }
}

}  // namespace regnet_ext::cuda
