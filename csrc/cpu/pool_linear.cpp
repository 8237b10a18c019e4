// CPU implementation of regnet_ext::pool_linear, a classifier head (global average pool, then a
// linear layer) in one call, and of its backward.
//
// Why an operator of its own: in a fused RegNet nothing before the head runs ATen's pooling,
// TensorIterator or GEMM dispatch code, so when the head comes their instructions have left the
// caches. Measured in place after a fused RegNetY-400MF trunk (batch 8, 2-core AVX2 VM):
// adaptive_avg_pool2d + oneDNN's packed linear took 460 us, these two short loops 145 us.
//
// Pass 1 pools each sample over its pixels; pass 2 gives each thread a block of classes, reads
// every weight row once and multiplies it, a few classes at a time, with all samples' means
// (which stay in L1 or L2: 8 x 440 floats are 14 KB). channels_last is the layout a RegNet trunk hands over (each
// pixel a contiguous C vector); NCHW is pooled plane by plane; other strides are made
// channels_last first. The backward recomputes the pooled means (one read of x) and writes
// dx = (dy W) / P in x's memory format, dW = dy^T s and db = sum_n dy.

#include "cpu/vec_capability.h"  // first: it selects at::vec's instruction set

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/channel_sums.h"
#include "kernels/pool_linear.h"

namespace regnet_ext::cpu {
namespace {

namespace k = regnet_ext::kernels;
using at::vec::Vectorized;

constexpr const char* kOp = "pool_linear";
// Channels one task of the input gradient's first pass handles: 8 AVX2 float vectors.
constexpr int64_t kChannelBlock = 64;
// Samples whose logits share each loaded weight vector.
constexpr int64_t kSamplesPerPass = 4;
// Multiply-adds below which a pass runs on the calling thread (waking the other threads costs
// a few microseconds).
constexpr int64_t kGrainMacs = 1 << 15;

// pooled [N, C] (contiguous) from x, channels_last or contiguous NCHW: the channel sums SE uses
// (channel_sums.h), scaled to means. One task a sample: the head's pooling is a few microseconds.
template <typename T>
void pool(const at::Tensor& x, bool channels_last, T* pooled) {
  const int64_t batch = x.size(0), channels = x.size(1), pixels = x.size(2) * x.size(3);
  const T* data = x.const_data_ptr<T>();
  const T scale = T(1) / static_cast<T>(pixels);
  at::parallel_for(0, batch, std::max<int64_t>(1, kGrainMacs / (pixels * channels)), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* xn = data + n * channels * pixels;
      T* out = pooled + n * channels;
      if (channels_last) {
        pool_block(xn, pixels, channels, out);
        for (int64_t c = 0; c < channels; ++c) out[c] *= scale;
      } else {
        for (int64_t c = 0; c < channels; ++c) out[c] = pool_run(xn + c * pixels, pixels) * scale;
      }
    }
  });
}

// y[n, k] = bias[k] + weight[k] . pooled[n] for every sample and class, in tiles of kClasses
// classes x kSamplesPerPass samples: each loaded weight vector serves the tile's samples and each
// loaded mean vector its classes (4 classes with AVX-512's 32 registers, 2 with AVX2's 16). Every
// logit sums its channels in the order of one dot product at a time, so the results are those of
// tiles of one class, against which (interleaved, 1000 classes, 2-core Ice Lake VM, 2026-12-06):
// batch 32 at 384 and 440 channels 2.38x and 2.12x (559 -> 233 us), batch 8 1.34-1.49x, batch 1
// 1.70x (440 channels) and 1.17x (1088).
template <typename T>
void logits(const T* pooled, const T* weight, const T* bias, int64_t batch, int64_t channels,
            int64_t classes, T* y) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size(), KS = kSamplesPerPass;
  constexpr int kClasses = W * sizeof(T) == 64 ? 4 : 2;
  const int64_t tiles = (classes + kClasses - 1) / kClasses;
  const int64_t grain = std::max<int64_t>(1, kGrainMacs / std::max<int64_t>(1, kClasses * batch * channels));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t k0 = t * kClasses, nk = std::min<int64_t>(kClasses, classes - k0);
      // Rows past the classes or the batch repeat the last one: computed, never stored.
      const T* w[kClasses];
      for (int i = 0; i < kClasses; ++i) w[i] = weight + (k0 + std::min<int64_t>(i, nk - 1)) * channels;
      for (int64_t n0 = 0; n0 < batch; n0 += KS) {
        const int64_t samples = std::min(KS, batch - n0);
        const T* s[KS];
        for (int64_t j = 0; j < KS; ++j) s[j] = pooled + (n0 + std::min(j, samples - 1)) * channels;
        Vec acc[kClasses][KS];
        REGNET_UNROLL for (int i = 0; i < kClasses; ++i)
          REGNET_UNROLL for (int64_t j = 0; j < KS; ++j) acc[i][j] = Vec(T(0));
        // One step over channels [c, c + n): partial loads fill the lanes past n with zeros.
        const auto step = [&](int64_t c, int64_t n) {
          Vec sv[KS];
          REGNET_UNROLL for (int64_t j = 0; j < KS; ++j) sv[j] = Vec::loadu(s[j] + c, n);
          REGNET_UNROLL for (int i = 0; i < kClasses; ++i) {
            const Vec wv = Vec::loadu(w[i] + c, n);
            REGNET_UNROLL for (int64_t j = 0; j < KS; ++j) acc[i][j] = k::pool_linear_dot_step(acc[i][j], wv, sv[j]);
          }
        };
        int64_t c = 0;
        for (; c + W <= channels; c += W) step(c, W);
        if (c < channels) step(c, channels - c);
        for (int64_t i = 0; i < nk; ++i) {
          const T b = bias == nullptr ? T(0) : bias[k0 + i];
          for (int64_t j = 0; j < samples; ++j)
            y[(n0 + j) * classes + k0 + i] =
                at::vec::vec_reduce_all<T>([](Vec& x, Vec& v) { return x + v; }, acc[i][j]) + b;
        }
      }
    }
  });
}

struct Geometry {
  int64_t batch, channels, classes;
};

Geometry check_args(const at::Tensor& x, const at::Tensor& weight) {
  checks::check_rank(kOp, x, 4, "x (N, C, H, W)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, kOp,
              ": x must be float32 or float64, got ", x.scalar_type());
  const int64_t batch = x.size(0), channels = x.size(1);
  TORCH_CHECK(batch > 0 && channels > 0 && x.size(2) > 0 && x.size(3) > 0, kOp,
              ": x must not be empty, got shape ", x.sizes());
  checks::check_like(kOp, x, "x", weight, "weight");
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == channels && weight.size(0) > 0, kOp,
              ": weight must have shape [classes, ", channels, "] (x's channels), got ",
              weight.sizes());
  return {batch, channels, weight.size(0)};
}

// x itself where it is channels_last or contiguous NCHW (`channels_last` says which), else a
// channels_last copy.
at::Tensor poolable(const at::Tensor& x, bool& channels_last) {
  channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) || !x.is_contiguous();
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) || x.is_contiguous()
             ? x
             : x.contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor pool_linear_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                           const std::optional<at::Tensor>& bias_in) {
  const Geometry g = check_args(x_in, weight_in);
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    checks::check_like(kOp, x_in, "x", *bias_in, "bias");
    checks::check_vector(kOp, *bias_in, g.classes, "bias");
    bias = bias_in->contiguous();
  }
  bool channels_last = false;
  const at::Tensor x = poolable(x_in, channels_last);
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor y = at::empty({g.batch, g.classes}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kOp, [&] {
    std::vector<scalar_t> pooled(static_cast<size_t>(g.batch * g.channels));
    pool<scalar_t>(x, channels_last, pooled.data());
    logits<scalar_t>(pooled.data(), weight.const_data_ptr<scalar_t>(),
                     bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, g.batch, g.channels,
                     g.classes, y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

// d[n, c] = scale * sum_k dy[n, k] weight[k, c]: the pooled means' gradient, scaled by 1/P.
template <typename T>
void pooled_grad(const T* dy, const T* weight, int64_t batch, int64_t channels, int64_t classes,
                 T scale, T* d) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  constexpr int64_t kVecs = kChannelBlock / W > 0 ? kChannelBlock / W : 1;
  const int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
  const int64_t grain = std::max<int64_t>(1, kGrainMacs / (classes * kChannelBlock));
  at::parallel_for(0, batch * blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, c0 = (task % blocks) * kChannelBlock;
      const int64_t count = std::min(kChannelBlock, channels - c0), vecs = (count + W - 1) / W;
      Vec acc[kVecs];
      for (int64_t v = 0; v < kVecs; ++v) acc[v] = Vec(T(0));
      for (int64_t cls = 0; cls < classes; ++cls) {
        const Vec g(dy[n * classes + cls]);
        const T* row = weight + cls * channels + c0;
        for (int64_t v = 0; v < vecs; ++v) {
          const int64_t left = count - v * W;
          acc[v] = k::pool_linear_dot_step(acc[v], left >= W ? Vec::loadu(row + v * W) : Vec::loadu(row + v * W, left), g);
        }
      }
      for (int64_t v = 0; v < vecs; ++v)
        (acc[v] * Vec(scale)).store(d + n * channels + c0 + v * W, std::min<int64_t>(count - v * W, W));
    }
  });
}

// dx[n, c, p] = d[n, c] for every pixel, in dx's memory format.
template <typename T>
void broadcast_pixels(const T* d, int64_t batch, int64_t channels, int64_t pixels, bool channels_last,
                      T* dx) {
  const int64_t grain = std::max<int64_t>(1, kGrainMacs / (pixels * channels));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T* out = dx + n * channels * pixels;
      const T* dn = d + n * channels;
      if (channels_last) {
        for (int64_t p = 0; p < pixels; ++p) std::copy(dn, dn + channels, out + p * channels);
      } else {
        for (int64_t c = 0; c < channels; ++c) std::fill(out + c * pixels, out + (c + 1) * pixels, dn[c]);
      }
    }
  });
}

// dweight[k, c] = sum_n dy[n, k] pooled[n, c]; dbias[k] = sum_n dy[n, k].
template <typename T>
void param_grads(const T* dy, const T* pooled, int64_t batch, int64_t channels, int64_t classes,
                 T* dweight, T* dbias) {
  using Vec = Vectorized<T>;
  constexpr int64_t W = Vec::size();
  const int64_t grain = std::max<int64_t>(1, kGrainMacs / (batch * channels));
  at::parallel_for(0, classes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t cls = begin; cls < end; ++cls) {
      T* row = dweight + cls * channels;
      T bias_grad = T(0);
      for (int64_t c = 0; c < channels; c += W) {
        const int64_t count = std::min<int64_t>(W, channels - c);
        Vec acc(T(0));
        for (int64_t n = 0; n < batch; ++n) {
          const T* s = pooled + n * channels + c;
          acc = k::pool_linear_dot_step(acc, Vec(dy[n * classes + cls]), count == W ? Vec::loadu(s) : Vec::loadu(s, count));
        }
        acc.store(row + c, count);
      }
      for (int64_t n = 0; n < batch; ++n) bias_grad += dy[n * classes + cls];
      dbias[cls] = bias_grad;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pool_linear_backward_cpu(const at::Tensor& grad_y_in,
                                                                        const at::Tensor& x_in,
                                                                        const at::Tensor& weight_in) {
  const Geometry g = check_args(x_in, weight_in);
  checks::check_like(kOp, x_in, "x", grad_y_in, "grad_y");
  checks::check_shape(kOp, grad_y_in, {g.batch, g.classes}, "grad_y");
  bool channels_last = false;
  const at::Tensor x = poolable(x_in, channels_last);
  const at::Tensor weight = weight_in.contiguous(), grad_y = grad_y_in.contiguous();
  const auto format = x_in.suggest_memory_format();
  at::Tensor grad_x = at::empty(x_in.sizes(), x_in.options().memory_format(format));
  at::Tensor grad_weight = at::empty({g.classes, g.channels}, x.options());
  at::Tensor grad_bias = at::empty({g.classes}, x.options());
  const int64_t pixels = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), kOp, [&] {
    const scalar_t* dy = grad_y.const_data_ptr<scalar_t>();
    std::vector<scalar_t> pooled(static_cast<size_t>(g.batch * g.channels));
    pool<scalar_t>(x, channels_last, pooled.data());
    param_grads<scalar_t>(dy, pooled.data(), g.batch, g.channels, g.classes,
                          grad_weight.mutable_data_ptr<scalar_t>(), grad_bias.mutable_data_ptr<scalar_t>());
    std::vector<scalar_t> d(static_cast<size_t>(g.batch * g.channels));
    pooled_grad<scalar_t>(dy, weight.const_data_ptr<scalar_t>(), g.batch, g.channels, g.classes,
                          scalar_t(1) / static_cast<scalar_t>(pixels), d.data());
    broadcast_pixels<scalar_t>(d.data(), g.batch, g.channels, pixels,
                               format == at::MemoryFormat::ChannelsLast,
                               grad_x.mutable_data_ptr<scalar_t>());
  });
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace
}  // namespace regnet_ext::cpu

TORCH_LIBRARY_IMPL(regnet_ext, CPU, m) {
  m.impl("pool_linear", &regnet_ext::cpu::pool_linear_cpu);
  m.impl("pool_linear_backward", &regnet_ext::cpu::pool_linear_backward_cpu);
}
