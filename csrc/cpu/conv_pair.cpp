// CPU implementation of regnet_ext::conv_pair_relu: a bottleneck's first two convs for
// inference, y = relu(conv3x3(relu(conv1x1(x) + bias_a), stride, padding 1, groups) + bias_b),
// BN already folded into both convs by the caller.
//
// Why a pair: run one after the other, the 1x1 conv writes its whole output (at batch 8,
// RegNetY-400MF's first block: 19 MB) and the grouped conv reads it back, both from memory; on
// the 2-core VM the grouped conv ran at half the speed it reaches on a cache-resident input.
// Here each task computes one band of output rows of one image: the 1x1 conv's output rows
// that band needs, with bias and ReLU, into a zero-padded band buffer that stays in L2 (our
// register tiles, cpu/gemm_bias_relu.h, up to kOwnGemmMaxInC input channels; else one GEMM
// through ATen and an epilogue pass), then the grouped conv on the band with our narrow-group
// kernel. Rows shared by neighbouring bands are computed by both (one row in 2R + 1 at stride 2,
// two in R + 2 at stride 1).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "cpu/channel_passes.h"
#include "cpu/gemm_bias_relu.h"
#include "cpu/grouped_conv_narrow.h"
#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {
namespace {

constexpr const char* kOp = "conv_pair_relu";
// conv a's GEMM with our register tiles up to this many input channels (cpu/gemm_bias_relu.h).
constexpr int64_t kOwnGemmMaxInC = 64;
// Bytes of one band buffer: the band (and ATen's GEMM output, where used) stay in a 1 MB L2.
constexpr int64_t kBandBytes = 256 << 10;

struct PairShape {
  int64_t batch, in_c, height, width, channels, stride, groups, out_h, out_w;
};

PairShape check_pair(const at::Tensor& x, const at::Tensor& weight_a, const at::Tensor& bias_a,
                     const at::Tensor& weight_b, const at::Tensor& bias_b, int64_t stride, int64_t groups) {
  checks::check_rank(kOp, x, 4, "x (N, C, H, W)");
  TORCH_CHECK(x.scalar_type() == at::kFloat, kOp, ": x must be float32, got ", x.scalar_type());
  for (auto [t, name] : {std::pair{&weight_a, "weight_a"}, {&bias_a, "bias_a"}, {&weight_b, "weight_b"},
                         {&bias_b, "bias_b"}})
    checks::check_like(kOp, x, "x", *t, name);
  TORCH_CHECK(stride == 1 || stride == 2, kOp, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(groups >= 1, kOp, ": groups must be >= 1, got ", groups);
  const int64_t in_c = x.size(1), c = weight_a.size(0);
  checks::check_shape(kOp, weight_a, {c, in_c, 1, 1}, "weight_a (C, C_in of x, 1, 1)");
  checks::check_vector(kOp, bias_a, c, "bias_a");
  TORCH_CHECK(c % groups == 0, kOp, ": weight_a's output channels (", c, ") must be divisible by groups (",
              groups, ")");
  checks::check_shape(kOp, weight_b, {c, c / groups, 3, 3}, "weight_b (C, C/groups, 3, 3)");
  checks::check_vector(kOp, bias_b, c, "bias_b");
  TORCH_CHECK(c / groups == 8 || c / groups == 16, kOp, ": the grouped conv needs 8 or 16 channels per group, got ",
              c / groups);
  TORCH_CHECK(kHaveNarrowGroupKernel, kOp,
              ": this build has no narrow-group conv kernel (needs AVX-512 or AVX2 with FMA)");
  TORCH_CHECK(x.size(0) > 0 && in_c > 0 && x.size(2) > 0 && x.size(3) > 0, kOp, ": x must not be empty, got ",
              x.sizes());
  const int64_t out_h = (x.size(2) - 1) / stride + 1, out_w = (x.size(3) - 1) / stride + 1;
  return {x.size(0), in_c, x.size(2), x.size(3), c, stride, groups, out_h, out_w};
}

// Output rows per band: as many as fit kBandBytes (but at least kMinBandRows, which bounds the
// rows computed twice on very wide images), split evenly. A single task (batch 1, one band) runs
// on the calling thread, so the GEMM and the grouped conv inside use every thread.
constexpr int64_t kMinBandRows = 4;
int64_t band_rows(const PairShape& s) {
  const int64_t row_bytes = s.stride * (s.width + 2) * s.channels * static_cast<int64_t>(sizeof(float));
  const int64_t most = std::min(std::max(kBandBytes / row_bytes, kMinBandRows), s.out_h);
  const int64_t bands = (s.out_h + most - 1) / most;
  return (s.out_h + bands - 1) / bands;
}

at::Tensor conv_pair_relu_cpu(const at::Tensor& x_in, const at::Tensor& weight_a, const at::Tensor& bias_a,
                              const at::Tensor& weight_b, const at::Tensor& bias_b, int64_t stride, int64_t groups) {
  const PairShape s = check_pair(x_in, weight_a, bias_a, weight_b, bias_b, stride, groups);
  // No autograd for this operator: the ATen calls below must not record any either.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor y = at::empty({s.batch, s.channels, s.out_h, s.out_w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t C = s.channels, W = s.width, padded_w = W + 2;
  const at::Tensor x_rows = x.permute({0, 2, 3, 1}).reshape({s.batch * s.height * W, s.in_c});
  const at::Tensor w_a = weight_a.reshape({C, s.in_c}).t();
  const at::Tensor b_a = bias_a.contiguous(), b_b = bias_b.contiguous();
  // The band geometry: no padding (the buffer holds it), the full padded width.
  const kernels::ConvGeometry whole = kernels::make_conv_geometry(1, s.height, W, C, C, 3, stride, 1, groups);
  const at::Tensor packed = pack_narrow_group_weight(weight_b, whole);
  const int64_t rows_per_band = band_rows(s), bands = (s.out_h + rows_per_band - 1) / rows_per_band;
  const int64_t max_rows = (rows_per_band - 1) * stride + 3;
  const float* bias_a_p = b_a.const_data_ptr<float>();
  float* y_p = y.data_ptr<float>();
#if defined(__AVX2__) && defined(__FMA__)
  const bool own_gemm = s.in_c <= kOwnGemmMaxInC;  // (C, 8 or 16 per group, is a multiple of 8)
#else
  constexpr bool own_gemm = false;
#endif
  const at::Tensor w_a_packed = own_gemm ? w_a.contiguous() : at::Tensor();  // [C_in][C]
  const std::vector<float> ones(own_gemm ? 0 : C, 1.f);

  at::parallel_for(0, s.batch * bands, 1, [&](int64_t t0, int64_t t1) {
    // Zeros in the padding columns once; the interior of every row is written before it is read.
    at::Tensor band = at::zeros({max_rows * padded_w, C}, x.options());
    at::Tensor gemm_out = own_gemm ? at::Tensor() : at::empty({max_rows * W, C}, x.options());
    float* band_p = band.data_ptr<float>();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / bands, o0 = (t % bands) * rows_per_band, o1 = std::min(s.out_h, o0 + rows_per_band);
      const int64_t first = o0 * stride - 1, rows = (o1 - o0 - 1) * stride + 3;  // input rows, global
      const int64_t r0 = std::max<int64_t>(first, 0), r1 = std::min(first + rows, s.height);
      for (int64_t r = first; r < first + rows; ++r)  // rows in the padding
        if (r < r0 || r >= r1) std::fill_n(band_p + (r - first) * padded_w * C, padded_w * C, 0.f);
      if (own_gemm) {  // straight into the band, bias and ReLU in registers
#if defined(__AVX2__) && defined(__FMA__)
        for (int64_t r = r0; r < r1; ++r)
          gemm_bias_relu(x_rows.const_data_ptr<float>() + (n * s.height + r) * W * s.in_c, W, s.in_c,
                         w_a_packed.const_data_ptr<float>(), C, bias_a_p, band_p + ((r - first) * padded_w + 1) * C, C);
#endif
      } else {
        at::Tensor out = gemm_out.narrow(0, 0, (r1 - r0) * W);
        at::mm_out(out, x_rows.narrow(0, (n * s.height + r0) * W, (r1 - r0) * W), w_a);
        const float* g = out.const_data_ptr<float>();
        for (int64_t r = r0; r < r1; ++r)  // + bias, ReLU, into the band's row (scale 1: exact)
          passes::normalize_rows(band_p + ((r - first) * padded_w + 1) * C, g + (r - r0) * W * C,
                                 static_cast<const float*>(nullptr), ones.data(), bias_a_p, W, C, /*relu=*/true);
      }
      kernels::ConvGeometry local = kernels::make_conv_geometry(1, rows, padded_w, C, C, 3, stride, 0, groups);
      // Inside this parallel region the kernel's own parallel_for runs on this thread.
      grouped_conv_narrow(local, band_p, packed.const_data_ptr<float>(), b_b.const_data_ptr<float>(), nullptr,
                          y_p + (n * s.out_h + o0) * s.out_w * C, /*relu=*/true);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(regnet_ext, CPU, m) { m.impl("conv_pair_relu", &conv_pair_relu_cpu); }

}  // namespace regnet_ext::cpu
