// The per-channel passes of conv_bn_act's CPU schedules over dense channels-last data, i.e. a
// [rows, C] matrix with C contiguous: batch moments, normalise (+ residual, ReLU), and the two
// passes of the batch-norm backward.
//
// Each pass runs the shared formulas of csrc/kernels (the ones the CUDA kernels use) on the
// CPU's vector type: full registers of channels (512-bit with AVX-512, 256-bit otherwise), one
// half register and single channels for the rest. Reductions keep a group of up to a quarter of
// the vector registers of per-channel accumulators while they read that group's part of every
// row in order (the backward's, over more channels than one group holds, walk whole rows with
// the sums in L1 instead; see relu_grad_sums). RegNet's widths (24, 32, 48, 104, ...) give
// short channel loops, which plain auto-vectorised loops handled poorly (an alias check and a
// load-add-store of the sums on every row), and one-vector-per-row walks read memory strided.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/bn_stats.h"
#include "kernels/conv_bn_act.h"
#include "kernels/conv_bn_act_backward.h"

namespace regnet_ext::cpu::passes {

using kernels::acc_t;

// Vectors of one register and of half of one: RegNet's widths are multiples of 8, so with
// AVX-512 a 256-bit vector covers the channels left over after the 512-bit ones (104 = 6 x 16 +
// 8). Without AVX-512 a 64-byte vector type would be expanded piecewise by the compiler: a
// float32 training step of RegNetX-400MF ran 0.85-0.89x eager's speed that way on a VM without
// AVX-512, where the AVX-512 build ran 1.00-1.02x.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64, kVectorRegisters = 32;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32, kVectorRegisters = 16;
#else
constexpr int kVectorBytes = 16, kVectorRegisters = 16;
#endif
template <typename A, int Bytes>
struct VectorOf {  // (the attribute needs a typedef inside a template to apply to A)
  typedef A type __attribute__((vector_size(Bytes)));
};
template <typename A>
using vec_t = typename VectorOf<A, kVectorBytes>::type;
template <typename A>
using half_vec_t = typename VectorOf<A, kVectorBytes / 2>::type;
template <typename A>
constexpr int kLanes = static_cast<int>(kVectorBytes / sizeof(A));
static_assert(sizeof(vec_t<float>) == kVectorBytes && sizeof(half_vec_t<float>) == kVectorBytes / 2);

// bfloat16 <-> float lanes as integer vector operations. Element by element through
// c10::BFloat16 the compiler kept a scalar loop: a bfloat16 training forward's two passes ran at
// a quarter of their float32 speed (2-core AMD EPYC, 104 channels, batch 8, 28px). (ATen's
// at::vec conversions, which squeeze_excite.cpp uses, fall back to their generic element-wise
// code in translation units that do not select an ATen CPU capability first, as these do not.)
template <typename V>
constexpr bool kIsFloatVector = !std::is_same_v<V, float> && sizeof(V) % sizeof(float) == 0;

template <int N>
struct BFloat16Lanes {
  typedef uint16_t bits16 __attribute__((vector_size(N * 2)));
  typedef uint32_t bits32 __attribute__((vector_size(N * 4)));
};

// float from the bfloat16's bits: the upper half of the float's.
template <typename V>
inline V load_bfloat16(const c10::BFloat16* p) {
  using L = BFloat16Lanes<static_cast<int>(sizeof(V) / sizeof(float))>;
  typename L::bits16 h;
  std::memcpy(&h, p, sizeof(h));
  const typename L::bits32 w = __builtin_convertvector(h, typename L::bits32) << 16;
  V v;
  std::memcpy(&v, &w, sizeof(V));
  return v;
}

// Round to nearest even, NaN to 0x7FC0: c10::BFloat16's conversion, lane by lane.
template <typename V>
inline void store_bfloat16(c10::BFloat16* p, const V& v) {
  using L = BFloat16Lanes<static_cast<int>(sizeof(V) / sizeof(float))>;
  typename L::bits32 u;
  std::memcpy(&u, &v, sizeof(V));
  typename L::bits32 rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  rounded = v != v ? typename L::bits32{} + 0x7FC0u : rounded;
  const typename L::bits16 h = __builtin_convertvector(rounded, typename L::bits16);
  std::memcpy(p, &h, sizeof(h));
}

// Lanes (or a scalar, for V = A) of type V from values of type T.
template <typename V, typename T>
inline V load(const T* p) {
  using A = acc_t<T>;
  if constexpr (std::is_same_v<T, A>) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  } else if constexpr (std::is_same_v<T, c10::BFloat16> && kIsFloatVector<V>) {
    return load_bfloat16<V>(p);
  } else {
    return kernels::lane_load<V>(p);
  }
}

template <typename T, typename V>
inline void store(T* p, const V& v) {
  using A = acc_t<T>;
  if constexpr (std::is_same_v<T, A>) {
    std::memcpy(p, &v, sizeof(V));
  } else if constexpr (std::is_same_v<T, c10::BFloat16> && kIsFloatVector<V>) {
    store_bfloat16(p, v);
  } else {
    constexpr int n = static_cast<int>(sizeof(V) / sizeof(A));
    A tmp[n];
    std::memcpy(tmp, &v, sizeof(V));
    for (int i = 0; i < n; ++i) p[i] = kernels::store_as<T>(tmp[i]);
  }
}

// body.template operator()<V>(c) for every full vector of channels from c, then at most one
// half vector, then per channel with V = A for the remainder.
template <typename A, typename F>
inline void for_channel_lanes(int64_t channels, const F& body) {
  int64_t c = 0;
  for (; c + kLanes<A> <= channels; c += kLanes<A>) body.template operator()<vec_t<A>>(c);
  if (c + kLanes<A> / 2 <= channels) {
    body.template operator()<half_vec_t<A>>(c);
    c += kLanes<A> / 2;
  }
  for (; c < channels; ++c) body.template operator()<A>(c);
}

// body.template operator()<V, G>(c) over the channels in groups of G <= MaxGroup vectors of
// type V starting at c: full vectors first, then at most one half vector, then single channels
// (V = A). A reduction keeps a group's G accumulators in registers while it reads the
// group's contiguous G * lanes values of every row, so memory is read in order.
template <typename A, int MaxGroup, typename F>
inline void for_channel_groups(int64_t channels, const F& body) {
  using V = vec_t<A>;
  const int64_t full = channels / kLanes<A>;
  int64_t v = 0;
  for (; v + MaxGroup <= full; v += MaxGroup) body.template operator()<V, MaxGroup>(v * kLanes<A>);
  [&]<int... G>(std::integer_sequence<int, G...>) {
    ((full - v == G + 1 ? (body.template operator()<V, G + 1>(v * kLanes<A>), 0) : 0), ...);
  }(std::make_integer_sequence<int, MaxGroup - 1>{});
  int64_t c = full * kLanes<A>;
  if (c + kLanes<A> / 2 <= channels) {
    body.template operator()<half_vec_t<A>, 1>(c);
    c += kLanes<A> / 2;
  }
  for (; c < channels; ++c) body.template operator()<A, 1>(c);
}

// Rows per block of a reduction: the block's rows of one channel vector stay in L1/L2 for the
// second read, and the per-block merge of partial sums stays cheap.
constexpr int64_t kRowBlock = 64;

// mean and m2 (sum of squared deviations from the mean) per channel of z's `rows` rows, as
// kernels::tile_moments computes them: the mean first, then the squared deviations.
template <typename T>
void block_moments(const T* z, int64_t rows, int64_t channels, acc_t<T>* mean, acc_t<T>* m2) {
  using A = acc_t<T>;
  // Two accumulator arrays: half of the registers.
  for_channel_groups<A, kVectorRegisters / 4>(channels, [&]<typename V, int G>(int64_t c0) {
    constexpr int64_t lanes = sizeof(V) / sizeof(A);
    V s[G] = {}, q[G] = {};
    for (int64_t r = 0; r < rows; ++r)
      for (int j = 0; j < G; ++j) s[j] += load<V>(z + r * channels + c0 + j * lanes);
    for (int j = 0; j < G; ++j) s[j] /= static_cast<A>(rows);  // the mean
    for (int64_t r = 0; r < rows; ++r)
      for (int j = 0; j < G; ++j) {
        const V d = load<V>(z + r * channels + c0 + j * lanes) - s[j];
        q[j] += d * d;
      }
    for (int j = 0; j < G; ++j) {
      store(mean + c0 + j * lanes, s[j]);
      store(m2 + c0 + j * lanes, q[j]);
    }
  });
}

// y = act(z * scale + shift + residual) over `rows` rows (y may be z).
template <typename T>
void normalize_rows(T* y, const T* z, const T* residual, const acc_t<T>* scale,
                    const acc_t<T>* shift, int64_t rows, int64_t channels, bool relu) {
  using A = acc_t<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * channels;
    for_channel_lanes<A>(channels, [&]<typename V>(int64_t c) {
      const V res = residual ? load<V>(residual + base + c) : V{};
      const kernels::ChannelAffine<V> affine{load<V>(scale + c), load<V>(shift + c)};
      store(y + base + c, kernels::conv_epilogue(load<V>(z + base + c), affine, res, relu));
    });
  }
}

// Backward pass 1 over `rows` rows: g = ReLU'(y) * dy, sum_g += sum of g, sum_g_xhat += sum of
// g * x-hat (x-hat from z, mean, invstd; skipped when z is null). Without ReLU, g is dy and a
// caller that needs no copy of it passes g = null; y is read only with ReLU.
template <typename T>
void relu_grad_sums(T* g, const T* dy, const T* y, const T* z, const acc_t<T>* mean,
                    const acc_t<T>* invstd, int64_t rows, int64_t channels, bool relu,
                    acc_t<T>* sum_g, acc_t<T>* sum_g_xhat) {
  using A = acc_t<T>;
  // One instantiation per case, so the inner loop has no branches and no dead streams.
  const auto pass = [&]<bool Relu, bool Store, bool Xhat>() {
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
      const int64_t r1 = std::min(rows, r0 + kRowBlock);
      // Four arrays (sums, mean, invstd): half of the registers.
      for_channel_groups<A, kVectorRegisters / 8>(channels, [&]<typename V, int G>(int64_t c0) {
        constexpr int64_t lanes = sizeof(V) / sizeof(A);
        V sg[G] = {}, sgx[G] = {}, mu[G] = {}, is[G] = {};
        if constexpr (Xhat)
          for (int j = 0; j < G; ++j) {
            mu[j] = load<V>(mean + c0 + j * lanes);
            is[j] = load<V>(invstd + c0 + j * lanes);
          }
        for (int64_t r = r0; r < r1; ++r)
          for (int j = 0; j < G; ++j) {
            const int64_t i = r * channels + c0 + j * lanes;
            V gv = load<V>(dy + i);
            if constexpr (Relu) gv = kernels::relu_grad(gv, load<V>(y + i), true);
            if constexpr (Store) store(g + i, gv);
            sg[j] += gv;
            if constexpr (Xhat) sgx[j] += gv * kernels::normalized(load<V>(z + i), mu[j], is[j]);
          }
        for (int j = 0; j < G; ++j) {
          const int64_t c = c0 + j * lanes;
          store(sum_g + c, load<V>(sum_g + c) + sg[j]);
          if constexpr (Xhat) store(sum_g_xhat + c, load<V>(sum_g_xhat + c) + sgx[j]);
        }
      });
    }
  };
  // More channels than one group of accumulators holds: rows in memory order, the sums in
  // memory (L1). Group by group, each group's walk read the rows strided and, with four streams,
  // at half the speed (2-core AVX2 VM, 48 to 208 channels: 19-25 GB/s against 36-47 GB/s; the
  // whole training backward of a 1x1 conv at batch 8 1.04-1.40x faster, most at 112 and 56 px).
  // (block_moments keeps its group walk: one stream, and there the group walk was the faster.)
  const auto linear = [&]<bool Relu, bool Store, bool Xhat>() {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t base = r * channels;
      for_channel_lanes<A>(channels, [&]<typename V>(int64_t c) {
        V gv = load<V>(dy + base + c);
        if constexpr (Relu) gv = kernels::relu_grad(gv, load<V>(y + base + c), true);
        if constexpr (Store) store(g + base + c, gv);
        store(sum_g + c, load<V>(sum_g + c) + gv);
        if constexpr (Xhat)
          store(sum_g_xhat + c, load<V>(sum_g_xhat + c) +
                                    gv * kernels::normalized(load<V>(z + base + c), load<V>(mean + c),
                                                             load<V>(invstd + c)));
      });
    }
  };
  const bool one_group = channels <= kVectorRegisters / 8 * kLanes<A>;
  const auto with_xhat = [&]<bool Relu, bool Store>() {
    if (z)
      one_group ? pass.template operator()<Relu, Store, true>() : linear.template operator()<Relu, Store, true>();
    else
      one_group ? pass.template operator()<Relu, Store, false>() : linear.template operator()<Relu, Store, false>();
  };
  if (relu)
    with_xhat.template operator()<true, true>();
  else if (g)
    with_xhat.template operator()<false, true>();
  else
    with_xhat.template operator()<false, false>();
}

// Backward pass 2 (batch statistics): dz = scale * (g - mean_g - x-hat * mean_g_xhat).
template <typename T>
void bn_input_grad_rows(T* dz, const T* g, const T* z, const acc_t<T>* mean,
                        const acc_t<T>* invstd, const acc_t<T>* scale, const acc_t<T>* mean_g,
                        const acc_t<T>* mean_g_xhat, int64_t rows, int64_t channels) {
  using A = acc_t<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * channels;
    for_channel_lanes<A>(channels, [&]<typename V>(int64_t c) {
      const V xhat = kernels::normalized(load<V>(z + base + c), load<V>(mean + c), load<V>(invstd + c));
      store(dz + base + c, kernels::bn_train_input_grad(load<V>(g + base + c), xhat, load<V>(scale + c),
                                                        load<V>(mean_g + c), load<V>(mean_g_xhat + c)));
    });
  }
}

}  // namespace regnet_ext::cpu::passes
