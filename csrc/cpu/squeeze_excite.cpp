// CPU implementation of regnet_ext::squeeze_excite and its backward.
//
// Forward reads x twice and writes y once: a pooling pass (partial sums per (sample, pixel
// chunk), so a small batch still uses every thread), the tiny MLP, then the scale pass.
// Backward reads x once and dy twice and writes dx once: one pass gathers both the pooled means
// and dg = sum_p(dy * x), the MLP is recomputed and differentiated (per sample, or for the whole
// batch with the weight rows split between the threads), then dx = dy * g + ds / P.
// channels_last is the fast path (each pixel is a contiguous C vector, vectorised over C); NCHW
// runs plane by plane (vectorised over pixels). Any other strides are made contiguous first.

#include "cpu/vec_capability.h"  // first: it selects at::vec's instruction set
#include "cpu/cache_size.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/channel_sums.h"
#include "cpu/chunk_stride.h"
#include "kernels/squeeze_excite.h"
#include "tensor_layout.h"

namespace regnet_ext::cpu {
namespace {

namespace k = regnet_ext::kernels;
using at::vec::Vectorized;
using k::acc_t;

// Work below about this many element-operations runs on the calling thread.
constexpr int64_t kGrainElements = 1 << 14;
// The MLP's multiply-adds per task: waking the other threads costs a few microseconds, as much
// as about 64K multiply-adds here, so smaller MLPs (batch 1) run on the calling thread.
constexpr int64_t kGrainMacs = 1 << 16;

// ---- NCHW planes (contiguous runs): SIMD body, scalar tail, through the header's formulas ----

// (sum_i x[i], sum_i dy[i] * x[i]): one NCHW plane of the backward's first pass.
template <typename T, typename A = acc_t<T>>
std::pair<A, A> pool_and_gate_grad_run(const T* x, const T* dy, int64_t n) {
  using S = Simd<T>;
  using Vec = typename S::Vec;
  constexpr int64_t W = Vec::size();
  Vec pool(A(0)), dgate(A(0));
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const Vec xv = S::load(x + i);
    pool = k::se_pool_step(pool, xv);
    dgate = k::se_gate_grad_step(dgate, S::load(dy + i), xv);
  }
  auto add = [](Vec& a, Vec& b) { return a + b; };
  A pool_total = at::vec::vec_reduce_all<A>(add, pool);
  A dgate_total = at::vec::vec_reduce_all<A>(add, dgate);
  for (; i < n; ++i) {
    const A xv = static_cast<A>(x[i]);
    pool_total = k::se_pool_step(pool_total, xv);
    dgate_total = k::se_gate_grad_step(dgate_total, static_cast<A>(dy[i]), xv);
  }
  return {pool_total, dgate_total};
}

// y[i] = x[i] * gate: one NCHW plane.
template <typename T, typename A = acc_t<T>>
void scale_run(const T* x, A gate, T* y, int64_t n) {
  using S = Simd<T>;
  using Vec = typename S::Vec;
  constexpr int64_t W = Vec::size();
  const Vec g(gate);
  int64_t i = 0;
  for (; i + W <= n; i += W) S::store(y + i, k::se_scale(S::load(x + i), g));
  for (; i < n; ++i) y[i] = static_cast<T>(k::se_scale(static_cast<A>(x[i]), gate));
}

// dx[i] = dy[i] * gate + ds_mean: one NCHW plane.
template <typename T, typename A = acc_t<T>>
void input_grad_run(const T* dy, A gate, A ds_mean, T* dx, int64_t n) {
  using S = Simd<T>;
  using Vec = typename S::Vec;
  constexpr int64_t W = Vec::size();
  const Vec g(gate), d(ds_mean);
  int64_t i = 0;
  for (; i + W <= n; i += W) S::store(dx + i, k::se_input_grad(S::load(dy + i), g, d));
  for (; i < n; ++i) dx[i] = static_cast<T>(k::se_input_grad(static_cast<A>(dy[i]), gate, ds_mean));
}

// ---- channels_last blocks of rows (pixels), row stride C ------------------------------------
// Rows are walked in memory order, each row as full SIMD vectors plus one partial vector for the
// channel tail, so the hardware prefetcher sees one linear stream per tensor. Per-channel
// accumulators and gates (C values) stay in L1; the reductions add two rows per accumulator
// update to halve the store-to-load chain through it.

// pool[c] = sum_r x[r, c], dgate[c] = sum_r dy[r, c] * x[r, c].
template <typename T, typename A = acc_t<T>>
void pool_and_gate_grad_block(const T* x, const T* dy, int64_t rows, int64_t channels, A* pool,
                              A* dgate) {
  using S = Simd<T>;
  using Vec = typename S::Vec;
  std::fill(pool, pool + channels, A(0));
  std::fill(dgate, dgate + channels, A(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * channels, *dyr = dy + r * channels;
    for_each_vector<Vec::size()>(channels, [&](int64_t c, int64_t n) {
      const Vec xv = S::load_n(xr + c, n);
      k::se_pool_step(Vec::loadu(pool + c, n), xv).store(pool + c, n);
      k::se_gate_grad_step(Vec::loadu(dgate + c, n), S::load_n(dyr + c, n), xv).store(dgate + c, n);
    });
  }
}

// y[r, c] = x[r, c] * gate[c]  (kGrad false), or dx[r, c] = dy[r, c] * gate[c] + ds_mean[c].
template <bool kGrad, typename T, typename A = acc_t<T>>
void elementwise_block(const T* in, int64_t rows, int64_t channels, const A* gate, const A* ds_mean,
                       T* out) {
  using S = Simd<T>;
  using Vec = typename S::Vec;
  for (int64_t r = 0; r < rows; ++r) {
    const T* src = in + r * channels;
    T* dst = out + r * channels;
    for_each_vector<Vec::size()>(channels, [&](int64_t c, int64_t n) {
      const Vec a = S::load_n(src + c, n), g = Vec::loadu(gate + c, n);
      if constexpr (kGrad) {
        S::store_n(dst + c, k::se_input_grad(a, g, Vec::loadu(ds_mean + c, n)), n);
      } else {
        S::store_n(dst + c, k::se_scale(a, g), n);
      }
    });
  }
}

// out[i] = W[i, :] . v for R rows of a row-major matrix (`stride` apart), n columns: v's loads
// serve R accumulator chains at once, where one dot product at a time waits on its FMA latency.
// Zero-filled partial loads take the last columns. The weight may be 16-bit (WT), converted to
// the accumulation type as it is loaded.
template <int R, typename WT, typename A>
void dot_rows(const WT* w, int64_t stride, const A* v, int64_t n, A* out) {
  using Vec = Vectorized<A>;
  using S = Simd<WT>;
  static_assert(std::is_same_v<typename S::Vec, Vec>, "dot_rows: the weight must load as the accumulation type");
  constexpr int64_t W = Vec::size();
  Vec acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec(A(0));
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const Vec vv = Vec::loadu(v + i);
    for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(S::load(w + r * stride + i), vv, acc[r]);
  }
  if (i < n) {
    const Vec vv = Vec::loadu(v + i, n - i);
    for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(S::load_n(w + r * stride + i, n - i), vv, acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = at::vec::vec_reduce_all<A>([](Vec& x, Vec& y) { return x + y; }, acc[r]);
}

// out[r] = unit(W[r, :] . v, bias[r]) for rows [r0, r1) of a row-major [rows, n] weight: one
// layer of the excitation MLP (unit: the header's se_hidden_from_dot or se_gate_from_dot), eight
// rows at a time (dot_rows). Against one dot product per row
// (three alternating process pairs, 2-core Intel Xeon VM, 2026-12-06): RegNetY-400MF's s4 SE
// (440 -> 110, 7px) 68-98 -> 51-64 us at batch 8, 20 -> 16 us at batch 1; RegNetY-4.0GF's
// 1088 -> 272 237 -> 212 us at batch 8 (at batch 1 its 2.4 MB of weights, read from beyond L2,
// bound it either way: about 40 us).
template <typename WT, typename A, typename Unit>
void linear_rows(const WT* w, const A* bias, const A* v, int64_t n, int64_t r0, int64_t r1, A* out, Unit unit) {
  constexpr int kRows = 8;
  A pre[kRows];
  int64_t r = r0;
  for (; r + kRows <= r1; r += kRows) {
    dot_rows<kRows>(w + r * n, n, v, n, pre);
    for (int i = 0; i < kRows; ++i) out[r + i] = unit(pre[i], bias[r + i]);
  }
  for (; r < r1; ++r) {
    dot_rows<1>(w + r * n, n, v, n, pre);
    out[r] = unit(pre[0], bias[r]);
  }
}


// ---- shapes, checks and layout ---------------------------------------------------------------

struct SeShape {
  int64_t batch, channels, hidden, pixels;
  bool channels_last;
};

void check_weight(const at::Tensor& w, const char* name, int64_t rows, int64_t cols,
                  const at::Tensor& x) {
  TORCH_CHECK(w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1), "squeeze_excite: ",
              name, " must be [", rows, ", ", cols, "] or [", rows, ", ", cols, ", 1, 1], got ",
              w.sizes());
  TORCH_CHECK(w.size(0) == rows && w.size(1) == cols, "squeeze_excite: ", name, " must be [", rows,
              ", ", cols, "] (or with trailing 1x1), got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && w.device() == x.device(), "squeeze_excite: ",
              name, " must have x's dtype and device (", x.scalar_type(), ", ", x.device(),
              "), got ", w.scalar_type(), ", ", w.device());
}

void check_bias(const at::Tensor& b, const char* name, int64_t length, const at::Tensor& x) {
  TORCH_CHECK(b.dim() == 1 && b.size(0) == length, "squeeze_excite: ", name, " must be [", length,
              "], got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == x.scalar_type() && b.device() == x.device(), "squeeze_excite: ",
              name, " must have x's dtype and device (", x.scalar_type(), ", ", x.device(),
              "), got ", b.scalar_type(), ", ", b.device());
}

SeShape check_inputs(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                     const at::Tensor& w2, const at::Tensor& b2) {
  TORCH_CHECK(x.dim() == 4, "squeeze_excite: x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
              "squeeze_excite: x must be float32, float64, bfloat16 or float16, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0,
              "squeeze_excite: x needs at least one channel and one pixel, got ", x.sizes());
  TORCH_CHECK(w1.dim() >= 1 && w1.size(0) > 0, "squeeze_excite: w1 must have at least one row, got ",
              w1.sizes());
  const int64_t channels = x.size(1), hidden = w1.size(0);
  check_weight(w1, "w1", hidden, channels, x);
  check_bias(b1, "b1", hidden, x);
  check_weight(w2, "w2", channels, hidden, x);
  check_bias(b2, "b2", channels, x);
  const bool channels_last = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return {x.size(0), channels, hidden, x.size(2) * x.size(3), channels_last};
}

at::MemoryFormat layout_of(const SeShape& shape) {
  return shape.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

std::pair<int64_t, int64_t> chunk_range(int64_t total, int64_t chunks, int64_t k) {
  const int64_t base = total / chunks, extra = total % chunks;
  const int64_t begin = k * base + std::min(k, extra);
  return {begin, begin + base + (k < extra ? 1 : 0)};
}

// An MLP weight as a [rows, cols] contiguous matrix of `dtype`.
at::Tensor as_matrix(const at::Tensor& w, int64_t rows, int64_t cols, at::ScalarType dtype) {
  return w.reshape({rows, cols}).to(dtype).contiguous();
}

at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// ---- schedules ------------------------------------------------------------------------------
// Per sample: a thread owns whole samples and pools, excites and scales each while it is still in
// its cache, so x comes from memory once. Batch: pool everything, run the MLP for the whole batch
// (each weight row read once for all samples), then scale; used when a sample or the weights do
// not fit in cache, or the batch is too small to occupy every thread. Both passes of the batch
// schedule split the work identically, so each thread re-reads the part it pooled.

// A sample fits when it is at most the L2 of a core (l2_cache_bytes); the weights when they take
// at most half of it, the rest left for a sample: RegNetY-400MF's s4 SE (440 -> 110, 387 KB of
// weights) took 89 us a call at batch 8 in the per-sample schedule against 109 us in the batch
// schedule, which an earlier 256 KB bound had chosen (1 MB L2, AMD EPYC, 2026-12-04, interleaved,
// 15 rounds). The L2 used to be taken as 1 MB everywhere: on a 2 MB-L2 Intel Xeon VM, reading
// it from the machine made RegNetY-4.0GF's 56px SE (128 channels, 1.6 MB a sample, batch 8)
// 1.14x faster (730 -> 642 us, 15 interleaved rounds, 2026-12-06); smaller samples unchanged.

struct Schedule {
  bool per_sample;
  int64_t chunks;  // batch schedule, channels_last: pixel chunks per sample (else 1)
};

// Elements (of acc_bytes each) between the rows of per-task partial sums: channels_last tasks
// update their rows in place every two pixel rows, so the rows sit chunk_stride apart; NCHW
// writes each plane's sum once, at n * C + c (pool_planes), so its rows stay packed.
int64_t partial_row_stride(const SeShape& s, int64_t acc_bytes) {
  return s.channels_last ? chunk_stride(s.channels, acc_bytes) : s.channels;
}

Schedule choose_schedule(const SeShape& s, int64_t element_bytes, int64_t acc_bytes) {
  const int64_t threads = at::get_num_threads();
  const int64_t l2 = l2_cache_bytes();
  const bool sample_fits = s.pixels * s.channels * element_bytes <= l2;
  const bool weights_fit = 2 * s.channels * s.hidden * acc_bytes <= l2 / 2;
  if (s.batch >= threads && sample_fits && weights_fit) return {true, 1};
  int64_t chunks = 1;
  if (s.channels_last && s.batch < threads) {
    const int64_t wanted = (threads + s.batch - 1) / std::max<int64_t>(s.batch, 1);
    const int64_t affordable = std::max<int64_t>(1, s.pixels * s.channels / kGrainElements);
    chunks = std::min({wanted, affordable, s.pixels});
  }
  return {false, chunks};
}

// NCHW batch schedule: planes per task, the same for both passes.
int64_t plane_grain(const SeShape& s) { return std::max<int64_t>(1, kGrainElements / s.pixels); }

// ---- work on one range: channels_last pixel rows [p0, p1) of sample n, or NCHW planes [q0, q1)

template <typename T, typename A = acc_t<T>>
void pool_rows(const T* x, const SeShape& s, int64_t n, int64_t p0, int64_t p1, A* acc) {
  pool_block(x + (n * s.pixels + p0) * s.channels, p1 - p0, s.channels, acc);
}

template <typename T, typename A = acc_t<T>>
void pool_planes(const T* x, const SeShape& s, int64_t q0, int64_t q1, A* sums) {
  for (int64_t q = q0; q < q1; ++q) sums[q] = pool_run(x + q * s.pixels, s.pixels);
}

template <typename T, typename A = acc_t<T>>
void scale_rows(const T* x, const A* gate_n, const SeShape& s, int64_t n, int64_t p0, int64_t p1,
                T* y) {
  const int64_t offset = (n * s.pixels + p0) * s.channels;
  elementwise_block<false>(x + offset, p1 - p0, s.channels, gate_n, gate_n, y + offset);
}

template <typename T, typename A = acc_t<T>>
void scale_planes(const T* x, const A* gate, const SeShape& s, int64_t q0, int64_t q1, T* y) {
  for (int64_t q = q0; q < q1; ++q) scale_run(x + q * s.pixels, gate[q], y + q * s.pixels, s.pixels);
}

template <typename T, typename A = acc_t<T>>
void pool_and_gate_grad_rows(const T* x, const T* dy, const SeShape& s, int64_t n, int64_t p0,
                             int64_t p1, A* pool, A* dgate) {
  const int64_t offset = (n * s.pixels + p0) * s.channels;
  pool_and_gate_grad_block(x + offset, dy + offset, p1 - p0, s.channels, pool, dgate);
}

template <typename T, typename A = acc_t<T>>
void pool_and_gate_grad_planes(const T* x, const T* dy, const SeShape& s, int64_t q0, int64_t q1,
                               A* pool, A* dgate) {
  for (int64_t q = q0; q < q1; ++q) {
    std::tie(pool[q], dgate[q]) = pool_and_gate_grad_run(x + q * s.pixels, dy + q * s.pixels, s.pixels);
  }
}

template <typename T, typename A = acc_t<T>>
void input_grad_rows(const T* dy, const A* gate_n, const A* ds_n, const SeShape& s, int64_t n,
                     int64_t p0, int64_t p1, T* dx) {
  const int64_t offset = (n * s.pixels + p0) * s.channels;
  elementwise_block<true>(dy + offset, p1 - p0, s.channels, gate_n, ds_n, dx + offset);
}

template <typename T, typename A = acc_t<T>>
void input_grad_planes(const T* dy, const A* gate, const A* ds_mean, const SeShape& s, int64_t q0,
                       int64_t q1, T* dx) {
  for (int64_t q = q0; q < q1; ++q) {
    input_grad_run(dy + q * s.pixels, gate[q], ds_mean[q], dx + q * s.pixels, s.pixels);
  }
}

// Runs rows(n, p0, p1) over every (sample, pixel chunk) task, or planes(q0, q1) over NCHW planes.
template <typename Rows, typename Planes>
void for_each_task(const SeShape& s, int64_t chunks, const Rows& rows, const Planes& planes) {
  if (s.channels_last) {
    at::parallel_for(0, s.batch * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        auto [p0, p1] = chunk_range(s.pixels, chunks, t % chunks);
        rows(t / chunks, t % chunks, p0, p1);
      }
    });
  } else {
    at::parallel_for(0, s.batch * s.channels, plane_grain(s), planes);
  }
}

// Whole-sample range, for the per-sample schedule.
template <typename Rows, typename Planes>
void on_sample(const SeShape& s, int64_t n, const Rows& rows, const Planes& planes) {
  if (s.channels_last) {
    rows(n, 0, 0, s.pixels);
  } else {
    planes(n * s.channels, (n + 1) * s.channels);
  }
}

// The MLP as [rows, cols] weight matrices of WT (the accumulation type, or the forward's x's
// type: 16-bit weights converted as the dot products load them) and biases of the accumulation
// type A.
template <typename WT, typename A>
struct SeWeights {
  const WT *w1, *w2;
  const A *b1, *b2;
};

// One sample's MLP: hidden z (C_se) and gate (C) from its pooled means.
template <typename WT, typename A>
void excite_sample(const SeWeights<WT, A>& w, const A* mean, const SeShape& s, A* z, A* gate) {
  linear_rows(w.w1, w.b1, mean, s.channels, 0, s.hidden, z, k::se_hidden_from_dot<A>);
  linear_rows(w.w2, w.b2, z, s.hidden, 0, s.channels, gate, k::se_gate_from_dot<A>);
}

// out[n, r] = unit(W[r, :] . in[n, :], bias[r]) for a [rows, in_len] weight and every sample:
// units of (block of weight rows, sample), ordered block first, so that a block's rows serve
// every sample from L1.
template <typename WT, typename A, typename Unit>
void linear_batch(const WT* weight, const A* bias, const A* in, int64_t in_len, int64_t rows, int64_t batch, A* out,
                  Unit unit) {
  constexpr int64_t kBlockRows = 32;
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, blocks * batch, std::max<int64_t>(1, kGrainMacs / (kBlockRows * in_len)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t t = begin; t < end; ++t) {
                       const int64_t r0 = t / batch * kBlockRows, n = t % batch;
                       linear_rows(weight, bias, in + n * in_len, in_len, r0, std::min(rows, r0 + kBlockRows),
                                   out + n * rows, unit);
                     }
                   });
}

// Batch schedule's MLP: z (C_se) and gate (C) of every sample.
template <typename WT, typename A>
void excite_batch(const SeWeights<WT, A>& w, const A* mean, const SeShape& s, A* z, A* gate) {
  linear_batch(w.w1, w.b1, mean, s.channels, s.hidden, s.batch, z, k::se_hidden_from_dot<A>);
  linear_batch(w.w2, w.b2, z, s.hidden, s.channels, s.batch, gate, k::se_gate_from_dot<A>);
}

// acc[i] += d * row[i], i < n.
template <typename A>
void axpy(A d, const A* row, int64_t n, A* acc) {
  using Vec = Vectorized<A>;
  const Vec dv(d);
  for_each_vector<Vec::size()>(n, [&](int64_t i, int64_t m) {
    at::vec::fmadd(dv, Vec::loadu(row + i, m), Vec::loadu(acc + i, m)).store(acc + i, m);
  });
}

// Row r of a linear layer's weight and bias gradients over the batch, dout [N, rows], in [N, cols]:
//   dW[r, :] = sum_n dout[n, r] * in[n, :],  db[r] = sum_n dout[n, r];
// one task per row needs no atomics. Each sum runs in sample order in a register and is stored
// once (a scalar loop over samples reloads and stores the row once per sample).
template <typename A>
void linear_grad_row(const A* dout, const A* in, int64_t batch, int64_t rows, int64_t cols, int64_t r, A* dw_row,
                     A* db_r) {
  using Vec = Vectorized<A>;
  constexpr int64_t W = Vec::size(), kChains = 4;  // independent sums, to hide the FMA latency
  int64_t k = 0;
  for (; k + kChains * W <= cols; k += kChains * W) {
    Vec acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = Vec(A(0));
    for (int64_t n = 0; n < batch; ++n) {
      const Vec d(dout[n * rows + r]);
      const A* in_n = in + n * cols + k;
      for (int i = 0; i < kChains; ++i) acc[i] = at::vec::fmadd(d, Vec::loadu(in_n + i * W), acc[i]);
    }
    for (int i = 0; i < kChains; ++i) acc[i].store(dw_row + k + i * W);
  }
  for_each_vector<W>(cols - k, [&](int64_t k1, int64_t m) {
    Vec acc(A(0));
    for (int64_t n = 0; n < batch; ++n)
      acc = at::vec::fmadd(Vec(dout[n * rows + r]), Vec::loadu(in + n * cols + k + k1, m), acc);
    acc.store(dw_row + k + k1, m);
  });
  A db = A(0);
  for (int64_t n = 0; n < batch; ++n) db += dout[n * rows + r];
  *db_r = db;
}

// Batch schedule's MLP backward, for the whole batch at once: from the pooled means and dg (both
// [N, C]), z and gate recomputed ([N, C_se], [N, C]), ds / P ([N, C]) and the four weight and bias
// gradients. Each thread takes a share of a weight's rows: a row of W2 gives every sample's gate,
// dW2's row and the row's terms of dz = W2^T dpre2 while it is in L1, a row of W1 dW1's row and
// its terms of ds = W1^T dz; the transposed products sum per thread, then over the threads. So W2
// is read once and W1 twice for the batch, on every thread, where the per-sample backward read
// both twice a sample on one thread. Training steps of the SE alone against that (forward and
// backward through autograd, 21 interleaved rounds, 2-core Ice Lake VM, 2026-12-07):
// RegNetY-4.0GF's 1088 -> 272 1.32x at batch 1 and 1.23x at batch 8, 1088 -> 128 1.20x and 1.12x,
// 512 -> 128 at batch 1 1.11x; the smaller SEs that take this schedule (batch 1) 1.00-1.11x.
template <typename A>
void excite_backward_batch(const SeWeights<A, A>& w, const A* mean, const A* dgate, const SeShape& s, A inv_pixels,
                           A* z, A* gate, A* dpre2, A* dz, A* ds_mean, A* dw1, A* db1, A* dw2, A* db2) {
  const int64_t N = s.batch, C = s.channels, H = s.hidden;
  linear_batch(w.w1, w.b1, mean, C, H, N, z, k::se_hidden_from_dot<A>);
  const int64_t parts = std::max<int64_t>(1, at::get_num_threads());
  // The threads' partials a cache line apart (chunk_stride): packed, the line where two met was
  // written by both on every row (false sharing). Training steps of the SE alone, padded against
  // packed (batch 1, RegNetY-400MF and -4.0GF's 15 SE shapes, 15 interleaved rounds, 2-core
  // Zen 4 VM, 2026-12-07): 1.01-1.07x.
  const int64_t dz_stride = chunk_stride(N * H, sizeof(A)), ds_stride = chunk_stride(N * C, sizeof(A));
  std::vector<A> dz_parts(parts * dz_stride), ds_parts(parts * ds_stride);
  // Rows [begin, end) of a [rows, cols] weight split into `parts`, each part summing into its own
  // [N, cols] partial, `stride` apart: row_terms(r, partial) for each of its rows.
  auto by_parts = [&](int64_t rows, int64_t cols, std::vector<A>& partials, int64_t stride, const auto& row_terms) {
    at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t part = p0; part < p1; ++part) {
        A* partial = partials.data() + part * stride;
        std::fill(partial, partial + N * cols, A(0));
        auto [r0, r1] = chunk_range(rows, parts, part);
        for (int64_t r = r0; r < r1; ++r) row_terms(r, partial);
      }
    });
  };
  by_parts(C, H, dz_parts, dz_stride, [&](int64_t c, A* dz_part) {
    const A* row = w.w2 + c * H;
    for (int64_t n = 0; n < N; ++n) {
      A dot;
      dot_rows<1>(row, H, z + n * H, H, &dot);
      const A g = k::se_gate_from_dot(dot, w.b2[c]);
      gate[n * C + c] = g;
      dpre2[n * C + c] = k::se_sigmoid_grad(dgate[n * C + c], g);
      axpy(dpre2[n * C + c], row, H, dz_part + n * H);
    }
    linear_grad_row(dpre2, z, N, C, H, c, dw2 + c * H, db2 + c);
  });
  k::se_merge_partials(dz_parts.data(), parts, N * H, dz_stride, A(1), dz);
  for (int64_t i = 0; i < N * H; ++i) dz[i] = k::se_hidden_grad(dz[i], z[i]);
  by_parts(H, C, ds_parts, ds_stride, [&](int64_t j, A* ds_part) {
    const A* row = w.w1 + j * C;
    for (int64_t n = 0; n < N; ++n) axpy(dz[n * H + j], row, C, ds_part + n * C);
    linear_grad_row(dz, mean, N, H, C, j, dw1 + j * C, db1 + j);
  });
  k::se_merge_partials(ds_parts.data(), parts, N * C, ds_stride, inv_pixels, ds_mean);
}

// ---- operators ------------------------------------------------------------------------------

// The MLP's tensors for SeWeights: weights as [rows, cols] matrices of `weight_dtype`, biases
// of `acc`. The forward keeps 16-bit weights as they are (converting RegNetY-400MF's 440 -> 110
// weights to float on every call made the bfloat16 operator take 2x the float32 one's time at
// batch 1); the backward reads them several times and converts them once.
struct MlpTensors {
  at::Tensor w1, b1, w2, b2;
  MlpTensors(const at::Tensor& w1_in, const at::Tensor& b1_in, const at::Tensor& w2_in, const at::Tensor& b2_in,
             const SeShape& s, at::ScalarType weight_dtype, at::ScalarType acc)
      : w1(as_matrix(w1_in, s.hidden, s.channels, weight_dtype)),
        b1(b1_in.to(acc).contiguous()),
        w2(as_matrix(w2_in, s.channels, s.hidden, weight_dtype)),
        b2(b2_in.to(acc).contiguous()) {}
  template <typename WT, typename A>
  SeWeights<WT, A> view() const {
    return {w1.const_data_ptr<WT>(), w2.const_data_ptr<WT>(), b1.const_data_ptr<A>(), b2.const_data_ptr<A>()};
  }
};

// y = SE(x) for x contiguous in layout_of(s), into y of the same layout, which may be x itself:
// every output element reads only x at its own position and its sample's gate, and each sample's
// gate is complete before its scale pass starts.
void squeeze_excite_into(const at::Tensor& x, const SeShape& s, const at::Tensor& w1_in,
                         const at::Tensor& b1_in, const at::Tensor& w2_in, const at::Tensor& b2_in,
                         at::Tensor& y) {
  if (s.batch == 0) return;
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  const MlpTensors weights(w1_in, b1_in, w2_in, b2_in, s, x.scalar_type(), acc);
  const Schedule sched = choose_schedule(s, x.element_size(), at::elementSize(acc));
  const auto opts = x.options().dtype(acc);
  const int64_t row = partial_row_stride(s, at::elementSize(acc));
  at::Tensor partial = at::empty({s.batch * sched.chunks, row}, opts);
  at::Tensor mean = at::empty({s.batch, s.channels}, opts);
  at::Tensor z = at::empty({s.batch, s.hidden}, opts);
  at::Tensor gate = at::empty({s.batch, s.channels}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "squeeze_excite_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    A *partialp = partial.data_ptr<A>(), *meanp = mean.data_ptr<A>();
    A *zp = z.data_ptr<A>(), *gatep = gate.data_ptr<A>();
    const SeWeights<scalar_t, A> w = weights.view<scalar_t, A>();
    const int64_t chunks = sched.chunks, C = s.channels;
    const A inv_pixels = A(1) / static_cast<A>(s.pixels);
    auto pool_rows_task = [&](int64_t n, int64_t part, int64_t p0, int64_t p1) {
      pool_rows(xp, s, n, p0, p1, partialp + (n * chunks + part) * row);
    };
    auto pool_planes_task = [&](int64_t q0, int64_t q1) { pool_planes(xp, s, q0, q1, partialp); };
    auto scale_rows_task = [&](int64_t n, int64_t, int64_t p0, int64_t p1) {
      scale_rows(xp, gatep + n * C, s, n, p0, p1, yp);
    };
    auto scale_planes_task = [&](int64_t q0, int64_t q1) { scale_planes(xp, gatep, s, q0, q1, yp); };

    if (sched.per_sample) {
      at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          on_sample(s, n, pool_rows_task, pool_planes_task);
          k::se_merge_partials(partialp + n * row, 1, C, row, inv_pixels, meanp + n * C);
          excite_sample(w, meanp + n * C, s, zp + n * s.hidden, gatep + n * C);
          on_sample(s, n, scale_rows_task, scale_planes_task);
        }
      });
    } else {
      for_each_task(s, chunks, pool_rows_task, pool_planes_task);
      at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          k::se_merge_partials(partialp + n * chunks * row, chunks, C, row, inv_pixels, meanp + n * C);
        }
      });
      excite_batch(w, meanp, s, zp, gatep);
      for_each_task(s, chunks, scale_rows_task, scale_planes_task);
    }
  });
}

at::Tensor squeeze_excite_cpu(const at::Tensor& x_in, const at::Tensor& w1_in,
                              const at::Tensor& b1_in, const at::Tensor& w2_in,
                              const at::Tensor& b2_in) {
  const SeShape s = check_inputs(x_in, w1_in, b1_in, w2_in, b2_in);
  const at::MemoryFormat layout = layout_of(s);
  const at::Tensor x = x_in.contiguous(layout);
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(layout));
  squeeze_excite_into(x, s, w1_in, b1_in, w2_in, b2_in, y);
  return y;
}

// In place (inference): x's memory is the output, so no fresh activation-sized buffer is written
// and the scale pass writes lines the pooling pass just read. Whole fused forwards against the
// out-of-place operator (interleaved in one process, AMD EPYC with AVX-512, 2026-12-05):
// RegNetY-400MF 1.02x at batch 8 and at batch 1, RegNetY-4.0GF 1.02x at batch 8 (the SE layers
// alone, RegNetY-400MF batch 8: 1.27 against 1.66 ms). Other strides go through a copy.
void squeeze_excite_inplace_cpu(at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                const at::Tensor& w2, const at::Tensor& b2) {
  const SeShape s = check_inputs(x, w1, b1, w2, b2);
  if (x.is_contiguous(layout_of(s))) {
    squeeze_excite_into(x, s, w1, b1, w2, b2, x);
  } else {
    at::Tensor dense = x.contiguous(layout_of(s));  // a copy, computed in place, copied back
    squeeze_excite_into(dense, s, w1, b1, w2, b2, dense);
    x.copy_(dense);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& w1_in,
    const at::Tensor& b1_in, const at::Tensor& w2_in, const at::Tensor& b2_in) {
  const SeShape s = check_inputs(x_in, w1_in, b1_in, w2_in, b2_in);
  TORCH_CHECK(grad_y.sizes() == x_in.sizes(), "squeeze_excite_backward: grad_y must have x's shape ",
              x_in.sizes(), ", got ", grad_y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x_in.scalar_type() && grad_y.device() == x_in.device(),
              "squeeze_excite_backward: grad_y must have x's dtype and device (", x_in.scalar_type(),
              ", ", x_in.device(), "), got ", grad_y.scalar_type(), ", ", grad_y.device());
  const at::MemoryFormat layout = layout_of(s);
  const at::Tensor x = x_in.contiguous(layout);
  const at::Tensor dy = grad_y.contiguous(layout);
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(layout));
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  const auto opts = x.options().dtype(acc);
  // Every element is written below (linear_grad_row) unless the batch is empty: zero-filling
  // them first took 107 of the 509 us of a training step of RegNetY-4.0GF's 1088 -> 272 SE at
  // batch 1 (2.4 MB of weight gradients).
  const auto weight_grad = [&](std::initializer_list<int64_t> size) {
    return s.batch == 0 ? at::zeros(size, opts) : at::empty(size, opts);
  };
  at::Tensor dw1 = weight_grad({s.hidden, s.channels}), db1 = weight_grad({s.hidden});
  at::Tensor dw2 = weight_grad({s.channels, s.hidden}), db2 = weight_grad({s.channels});
  auto results = [&] {
    // The weights' own strides (a channels_last 1x1 weight's): see in_layout_of.
    return std::make_tuple(dx, in_layout_of(dw1.to(w1_in.scalar_type()).reshape(w1_in.sizes()), w1_in),
                           db1.to(b1_in.scalar_type()),
                           in_layout_of(dw2.to(w2_in.scalar_type()).reshape(w2_in.sizes()), w2_in),
                           db2.to(b2_in.scalar_type()));
  };
  if (s.batch == 0) return results();

  const MlpTensors weights(w1_in, b1_in, w2_in, b2_in, s, acc, acc);
  const Schedule sched = choose_schedule(s, x.element_size(), at::elementSize(acc));
  const int64_t rows = s.batch * sched.chunks;
  const int64_t row = partial_row_stride(s, at::elementSize(acc));
  at::Tensor pool_partial = at::empty({rows, row}, opts);
  at::Tensor dgate_partial = at::empty({rows, row}, opts);
  at::Tensor mean = at::empty({s.batch, s.channels}, opts);
  at::Tensor dgate = at::empty({s.batch, s.channels}, opts);
  at::Tensor z = at::empty({s.batch, s.hidden}, opts);
  at::Tensor gate = at::empty({s.batch, s.channels}, opts);
  at::Tensor dpre2 = at::empty({s.batch, s.channels}, opts);
  at::Tensor dz = at::empty({s.batch, s.hidden}, opts);
  at::Tensor ds_mean = at::empty({s.batch, s.channels}, opts);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "squeeze_excite_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *dyp = dy.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    A *poolp = pool_partial.data_ptr<A>(), *dgatepartp = dgate_partial.data_ptr<A>();
    A *meanp = mean.data_ptr<A>(), *dgatep = dgate.data_ptr<A>(), *zp = z.data_ptr<A>();
    A *gatep = gate.data_ptr<A>(), *dpre2p = dpre2.data_ptr<A>(), *dzp = dz.data_ptr<A>();
    A* dsp = ds_mean.data_ptr<A>();
    const SeWeights<A, A> w = weights.view<A, A>();
    const int64_t chunks = sched.chunks, C = s.channels, H = s.hidden;
    const A inv_pixels = A(1) / static_cast<A>(s.pixels);
    auto reduce_rows_task = [&](int64_t n, int64_t part, int64_t p0, int64_t p1) {
      const int64_t at = (n * chunks + part) * row;
      pool_and_gate_grad_rows(xp, dyp, s, n, p0, p1, poolp + at, dgatepartp + at);
    };
    auto reduce_planes_task = [&](int64_t q0, int64_t q1) {
      pool_and_gate_grad_planes(xp, dyp, s, q0, q1, poolp, dgatepartp);
    };
    auto input_grad_rows_task = [&](int64_t n, int64_t, int64_t p0, int64_t p1) {
      input_grad_rows(dyp, gatep + n * C, dsp + n * C, s, n, p0, p1, dxp);
    };
    auto input_grad_planes_task = [&](int64_t q0, int64_t q1) {
      input_grad_planes(dyp, gatep, dsp, s, q0, q1, dxp);
    };
    A *dw1p = dw1.data_ptr<A>(), *db1p = db1.data_ptr<A>();
    A *dw2p = dw2.data_ptr<A>(), *db2p = db2.data_ptr<A>();
    auto merge_sample = [&](int64_t n) {
      k::se_merge_partials(poolp + n * chunks * row, chunks, C, row, inv_pixels, meanp + n * C);
      k::se_merge_partials(dgatepartp + n * chunks * row, chunks, C, row, A(1), dgatep + n * C);
    };
    if (sched.per_sample) {
      // Each sample's MLP recomputed and differentiated on the thread that pools and scales it
      // (its weights fit in the L2, see choose_schedule), then the weight gradients over the
      // batch, one row per task: W2's C rows, then W1's C_se.
      at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          on_sample(s, n, reduce_rows_task, reduce_planes_task);
          merge_sample(n);
          excite_sample(w, meanp + n * C, s, zp + n * H, gatep + n * C);
          k::se_excite_backward(w.w1, w.w2, zp + n * H, gatep + n * C, dgatep + n * C, C, H, inv_pixels,
                                dpre2p + n * C, dzp + n * H, dsp + n * C);
          on_sample(s, n, input_grad_rows_task, input_grad_planes_task);
        }
      });
      const int64_t grain = std::max<int64_t>(1, kGrainElements / (s.batch * std::max(C, H)));
      at::parallel_for(0, C + H, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          if (r < C) {
            linear_grad_row(dpre2p, zp, s.batch, C, H, r, dw2p + r * H, db2p + r);
          } else {
            const int64_t j = r - C;
            linear_grad_row(dzp, meanp, s.batch, H, C, j, dw1p + j * C, db1p + j);
          }
        }
      });
    } else {
      for_each_task(s, chunks, reduce_rows_task, reduce_planes_task);
      at::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) merge_sample(n);
      });
      excite_backward_batch(w, meanp, dgatep, s, inv_pixels, zp, gatep, dpre2p, dzp, dsp, dw1p, db1p, dw2p, db2p);
      for_each_task(s, chunks, input_grad_rows_task, input_grad_planes_task);
    }
  });
  return results();
}

}  // namespace
}  // namespace regnet_ext::cpu

TORCH_LIBRARY_IMPL(regnet_ext, CPU, m) {
  m.impl("squeeze_excite", &regnet_ext::cpu::squeeze_excite_cpu);
  m.impl("squeeze_excite_", &regnet_ext::cpu::squeeze_excite_inplace_cpu);
  m.impl("squeeze_excite_backward", &regnet_ext::cpu::squeeze_excite_backward_cpu);
}
