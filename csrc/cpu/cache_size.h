// The per-core L2 cache size that cache-blocked schedules size their working sets by.
#pragma once

#include <unistd.h>

#include <cstdint>

namespace regnet_ext::cpu {

// From the C library (glibc reads CPUID); 1 MB where it does not say (the 2-core AMD EPYC the
// kernels were first tuned on has 1 MB, the Intel Xeon VMs 2 MB).
inline int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (reported > 0) return static_cast<int64_t>(reported);
#endif
    return int64_t(1) << 20;
  }();
  return bytes;
}

}  // namespace regnet_ext::cpu
