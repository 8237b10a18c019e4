// Where threads write per-chunk partial results (sums, moments) into one buffer, each chunk's
// values updated in place as its rows stream by: the distance between neighbouring chunks.
#pragma once

#include <cstdint>

namespace regnet_ext::cpu {

// Elements of `element_bytes` each between the starts of neighbouring chunks: `size` values and
// then at least a cache line (64 bytes) of spare, so that no line holds values of two chunks,
// which two threads would write at once (false sharing), wherever the buffer starts. Packed back
// to back, conv_bn_act's backward pass 1 for 128 channels (batch 8, 56px) took 2.7 ms on two
// threads and 0.64 ms on one (2-core AMD EPYC VM), as malloc happened to place the buffer.
// Padded, interleaved against packed in one process: training rows of the kernel benchmark
// 1.00-1.05x, whole fused training steps at batch 8 1.004-1.008x; squeeze_excite at batch 1
// (a sample split across threads) 1.36-1.37x at 40 and 56 channels, 1.17x at 104 and 120.
inline int64_t chunk_stride(int64_t size, int64_t element_bytes) {
  return size + (64 + element_bytes - 1) / element_bytes;
}

}  // namespace regnet_ext::cpu
