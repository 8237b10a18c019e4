// y[r, :] = relu(x[r, :] . W + bias) for a few rows and a small weight (conv_pair's 1x1 conv on one
// image row): register tiles of 2 rows x up to 48 output channels, the weight ([K][N], N a
// multiple of 8) read from L1, bias and ReLU applied in registers and each value stored once.
// Against ATen's GEMM (MKL, one thread) plus the epilogue pass, on the pair's band shapes
// (2-core AVX2 VM, 2026-12-04): K 32, N 48: 1.53x; K 48, N 104: 1.17x; from K 104 up MKL's
// blocked GEMM was as fast or faster (0.85-0.98x), so the caller keeps ATen's there. Holding each
// weight vector in a register (keep_in_register) made conv_pair_relu 1.07-1.10x faster on
// RegNet's first blocks (2-core AVX-512 VM, 2026-12-05, interleaved A/B in one process).
// Defined where the compiler targets AVX2 with FMA (and so AVX-512).
#pragma once

#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace regnet_ext::cpu {

#if defined(__AVX2__) && defined(__FMA__)
namespace gemm_detail {

// An empty asm that claims to change v, so the compiler must hold v in a register: without it
// GCC folds the weight load into each of the two FMAs that use it, and the loop is bound by
// loads (14 per 12 FMAs) instead of by FMAs.
inline void keep_in_register(__m256& v) {
#if defined(__GNUC__)
  asm("" : "+x"(v));
#endif
}

// Columns c0 .. c0 + 8V of every row; rows two at a time (12 accumulators at V = 6).
template <int V>
inline void column_block(const float* x, int64_t rows, int64_t k_dim, const float* w, int64_t n, int64_t c0,
                         const float* bias, float* y, int64_t y_stride) {
  const __m256 zero = _mm256_setzero_ps();
  // ReLU as blend on v < 0, so that a NaN stays NaN as in torch.relu.
  const auto relu = [&](__m256 v) { return _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ)); };
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    __m256 acc0[V], acc1[V];
    for (int j = 0; j < V; ++j) acc0[j] = acc1[j] = _mm256_loadu_ps(bias + c0 + 8 * j);
    const float *x0 = x + r * k_dim, *x1 = x0 + k_dim;
    for (int64_t k = 0; k < k_dim; ++k) {
      const __m256 a0 = _mm256_broadcast_ss(x0 + k), a1 = _mm256_broadcast_ss(x1 + k);
      const float* wk = w + k * n + c0;
#pragma GCC unroll 8
      for (int j = 0; j < V; ++j) {
        __m256 wv = _mm256_loadu_ps(wk + 8 * j);
        keep_in_register(wv);
        acc0[j] = _mm256_fmadd_ps(a0, wv, acc0[j]);
        acc1[j] = _mm256_fmadd_ps(a1, wv, acc1[j]);
      }
    }
    for (int j = 0; j < V; ++j) {
      _mm256_storeu_ps(y + r * y_stride + c0 + 8 * j, relu(acc0[j]));
      _mm256_storeu_ps(y + (r + 1) * y_stride + c0 + 8 * j, relu(acc1[j]));
    }
  }
  if (r < rows) {
    __m256 acc[V];
    for (int j = 0; j < V; ++j) acc[j] = _mm256_loadu_ps(bias + c0 + 8 * j);
    for (int64_t k = 0; k < k_dim; ++k) {
      const __m256 a = _mm256_broadcast_ss(x + r * k_dim + k);
      for (int j = 0; j < V; ++j) acc[j] = _mm256_fmadd_ps(a, _mm256_loadu_ps(w + k * n + c0 + 8 * j), acc[j]);
    }
    for (int j = 0; j < V; ++j) _mm256_storeu_ps(y + r * y_stride + c0 + 8 * j, relu(acc[j]));
  }
}

}  // namespace gemm_detail

// x: [rows, k_dim] contiguous; w: [k_dim, n] contiguous, n % 8 == 0; y rows y_stride apart.
inline void gemm_bias_relu(const float* x, int64_t rows, int64_t k_dim, const float* w, int64_t n, const float* bias,
                           float* y, int64_t y_stride) {
  for (int64_t c0 = 0; c0 < n;) {
    const int64_t left = (n - c0) / 8;
    switch (left >= 6 ? 6 : left) {
      case 6: gemm_detail::column_block<6>(x, rows, k_dim, w, n, c0, bias, y, y_stride); c0 += 48; break;
      case 5: gemm_detail::column_block<5>(x, rows, k_dim, w, n, c0, bias, y, y_stride); c0 += 40; break;
      case 4: gemm_detail::column_block<4>(x, rows, k_dim, w, n, c0, bias, y, y_stride); c0 += 32; break;
      case 3: gemm_detail::column_block<3>(x, rows, k_dim, w, n, c0, bias, y, y_stride); c0 += 24; break;
      case 2: gemm_detail::column_block<2>(x, rows, k_dim, w, n, c0, bias, y, y_stride); c0 += 16; break;
      default: gemm_detail::column_block<1>(x, rows, k_dim, w, n, c0, bias, y, y_stride); c0 += 8; break;
    }
  }
}
#endif

}  // namespace regnet_ext::cpu
