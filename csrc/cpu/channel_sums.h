// Channel sums shared by the CPU operators that pool (squeeze_excite, pool_linear), and the SIMD
// loads and stores they use: a channels_last block of rows summed per channel, an NCHW plane
// summed. Include cpu/vec_capability.h first in the translation unit (it selects at::vec's
// instruction set).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>

#include "kernels/squeeze_excite.h"

namespace regnet_ext::cpu {

// Loads and stores one SIMD vector of acc_t<T> from/to memory holding T.
// load_n/store_n move the first `count` (<= size()) lanes; the other lanes load as zero.
template <typename T>
struct Simd {
  using Vec = at::vec::Vectorized<T>;
  static Vec load(const T* p) { return Vec::loadu(p); }
  static void store(T* p, const Vec& v) { v.store(p); }
  static Vec load_n(const T* p, int64_t count) {
    return count == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, count);
  }
  static void store_n(T* p, const Vec& v, int64_t count) { v.store(p, count); }
};
template <typename T>
struct ReducedSimd {
  using Vec = at::vec::Vectorized<float>;
  static Vec load(const T* p) {
    Vec v;
    at::vec::load_to_float(p, v);
    return v;
  }
  static void store(T* p, const Vec& v) { store_n(p, v, Vec::size()); }
  static Vec load_n(const T* p, int64_t count) {
    if (count == Vec::size()) return load(p);
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, count)));
  }
  // Through a buffer (memcpy: a plain 256-bit store for a whole vector), not the packed pair's
  // store(p, count): that is a 512-bit masked store, and a load of the next 16 values overlapping
  // its 64 bytes waited for it, so writing in place (squeeze_excite_) in bfloat16 took 2.5-3.5x
  // as long as out of place (Zen 4 VM, batch 8, 48-208 channels).
  static void store_n(T* p, const Vec& v, int64_t count) {
    alignas(64) T packed[2 * Vec::size()];
    at::vec::convert_from_float<T>(v, v).store(packed);
    std::memcpy(p, packed, count * sizeof(T));
  }
};
template <>
struct Simd<at::BFloat16> : ReducedSimd<at::BFloat16> {};
template <>
struct Simd<at::Half> : ReducedSimd<at::Half> {};

// ---- channels_last blocks of rows (pixels), row stride C ------------------------------------
// Rows are walked in memory order, each row as full SIMD vectors plus one partial vector for the
// channel tail, so the hardware prefetcher sees one linear stream per tensor. Per-channel
// accumulators stay in L1; the sum adds two rows per accumulator update to halve the
// store-to-load chain through it.

// Calls f(c, n) for the vectors of one row: n = W lanes from channel c, then the tail (n < W).
// Inlined, the full-vector calls see n == W as a constant, so load_n / store_n take no branch.
template <int64_t W, typename F>
inline void for_each_vector(int64_t channels, const F& f) {
  int64_t c = 0;
  for (; c + W <= channels; c += W) f(c, W);
  if (c < channels) f(c, channels - c);
}

// out[c] = sum over rows of x[r, c].
template <typename T, typename A = kernels::acc_t<T>>
void pool_block(const T* x, int64_t rows, int64_t channels, A* out) {
  using S = Simd<T>;
  using Vec = typename S::Vec;
  std::fill(out, out + channels, A(0));
  // Rows a and b (b may be null) added into out.
  auto add_rows = [&](const T* a, const T* b) {
    for_each_vector<Vec::size()>(channels, [&](int64_t c, int64_t n) {
      Vec v = S::load_n(a + c, n);
      if (b) v = kernels::se_pool_step(v, S::load_n(b + c, n));
      kernels::se_pool_step(Vec::loadu(out + c, n), v).store(out + c, n);
    });
  };
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) add_rows(x + r * channels, x + (r + 1) * channels);
  if (r < rows) add_rows(x + r * channels, nullptr);
}

// ---- NCHW planes (contiguous runs) --------------------------------------------------------------

// sum_i x[i]: one NCHW plane.
template <typename T, typename A = kernels::acc_t<T>>
A pool_run(const T* x, int64_t n) {
  using S = Simd<T>;
  using Vec = typename S::Vec;
  constexpr int64_t W = Vec::size();
  Vec acc(A(0));
  int64_t i = 0;
  for (; i + W <= n; i += W) acc = kernels::se_pool_step(acc, S::load(x + i));
  A total = at::vec::vec_reduce_all<A>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) total = kernels::se_pool_step(total, static_cast<A>(x[i]));
  return total;
}

}  // namespace regnet_ext::cpu
