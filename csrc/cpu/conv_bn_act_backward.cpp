// CPU backward of conv_bn_act (eval and training modes).
//
// Pass 1 reads grad_y, y (and z in training) once: g = ReLU'(y) * grad_y, stored (it is also the
// residual's gradient), with per-chunk sums of g and g * x-hat. Training makes a second pass for
// dz (the batch-statistics backward); eval differentiates through the folded weights instead,
// so g feeds the conv gradients directly. The conv gradients come from oneDNN through ATen,
// with, for grouped convs, the weight gradient from our register tiles (8 or 16 channels per
// group: grouped_conv_narrow_weight_grad.h; a multiple of 16 from 32 on: grouped_conv_wide_
// weight_grad.h; otherwise the generic tiles) and the input gradient from Winograd or the
// narrow-group kernel, and for 1x1 convs both gradients from ATen's GEMMs
// (stride 1) or our AVX-512 GEMM tiles, where the autotuner (conv_autotune.h) or the rules
// (conv_bn_act_cpu.h) say so; with REGNET_EXT_CPU_CONV=tiles, from GEMMs for 1x1 ungrouped convs
// and our register tiles (kernels/conv_bn_act_backward.h) otherwise. The two passes are
// vectorised in channel_passes.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/channel_passes.h"
#include "cpu/conv_bn_act_cpu.h"
#include "cpu/gemm_1x1_weight_grad.h"
#include "cpu/grouped_conv_narrow_weight_grad.h"
#include "cpu/grouped_conv_wide_weight_grad.h"
#include "tensor_layout.h"
#include "kernels/bn_stats.h"
#include "kernels/conv_bn_act_backward.h"

namespace regnet_ext::cpu {
namespace {

using kernels::load_acc;
using kernels::store_as;

constexpr const char* kOp = "conv_bn_act_backward";
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <typename A>
std::vector<A> vector_of(const at::Tensor& t) {
  const at::Tensor c = t.to(c10::CppTypeToScalarType<A>::value).contiguous();
  return std::vector<A>(c.data_ptr<A>(), c.data_ptr<A>() + c.numel());
}

// A fresh tensor holding v (one allocation, no from_blob + copy: at batch 1 such small ops add up
// to a tenth of a training call).
template <typename A>
at::Tensor tensor_of(const std::vector<A>& v, const at::TensorOptions& options) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, options.dtype(c10::CppTypeToScalarType<A>::value));
  std::copy(v.begin(), v.end(), t.data_ptr<A>());
  return t;
}

inline at::Tensor as_rows(const at::Tensor& nhwc) {
  return nhwc.permute({0, 2, 3, 1}).reshape({-1, nhwc.size(1)});
}

// grad_x of a strided 1x1 conv from the rows r = dz W' of its output pixels (from our tiles or
// ATen's GEMM): each input pixel (n, h, w) takes the row of output pixel (n, h/s, w/s) where s
// divides h and w, zero elsewhere. One pass writing every element once (zeros then the strided
// copy through ATen's indexing took 1.7 ms at 32 channels, 112px, batch 8, on the 2-core Zen 4
// VM, a zero fill alone 0.18 ms).
template <typename T>
void scatter_strided_rows(const T* rows, const ConvGeometry& g, T* grad_x) {
  const int64_t C = g.in_c, s = g.stride;
  at::parallel_for(0, g.batch * g.in_h, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.in_h, h = r % g.in_h;
      T* dst = grad_x + r * g.in_w * C;
      if (h % s != 0) {
        std::fill(dst, dst + g.in_w * C, T(0));
        continue;
      }
      const T* src = rows + (n * g.out_h + h / s) * g.out_w * C;
      for (int64_t w = 0; w < g.in_w; ++w, dst += C) {
        if (w % s == 0)
          std::copy(src + (w / s) * C, src + (w / s + 1) * C, dst);
        else
          std::fill(dst, dst + C, T(0));
      }
    }
  });
}

// Both gradients of a 1x1 conv from our AVX-512 tiles (float32; gemm_tiles_apply holds):
// grad_x = dz W' (gemm_1x1_tiles.h; W', the weight scaled by the folded BN's scale in eval, is
// already the panels' [K, N]) and raw = dz^T x (gemm_1x1_weight_grad.h). A strided conv's
// grad_x scatters the rows into place (scatter_strided_rows), its raw reads every stride-th
// pixel in place. Either is an empty tensor where not asked for.
template <typename T>
std::pair<at::Tensor, at::Tensor> gemm_tiles_grads(const at::Tensor& dz, const at::Tensor& xc, const at::Tensor& weight,
                                                   const at::Tensor& scale, const ConvGeometry& g, bool training,
                                                   bool input_grad, bool param_grads, at::MemoryFormat format) {
  at::Tensor grad_x = at::empty({0}, xc.options()), raw;
  if constexpr (std::is_same_v<T, float>) {
    const int64_t C = g.out_c, pixels = g.batch * g.out_h * g.out_w;
    const bool strided = g.stride > 1;
    if (input_grad) {
      at::Tensor w = weight.reshape({C, g.in_c}).to(at::kFloat);
      if (!training) w = w * scale.unsqueeze(1);
      grad_x = empty_nhwc(xc, g.batch, g.in_c, g.in_h, g.in_w);
      const at::Tensor rows = strided ? at::empty({pixels, g.in_c}, xc.options()) : grad_x;
      gemm_1x1_tiles(dz.const_data_ptr<float>(), g.batch, g.out_h, g.out_w, C, 1,
                     pack_gemm_tiles_panels(w).const_data_ptr<float>(),
                     padded_to_vectors(at::Tensor(), g.in_c, xc.options()).const_data_ptr<float>(), nullptr,
                     rows.data_ptr<float>(), g.in_c, false);
      if (strided) scatter_strided_rows(rows.const_data_ptr<float>(), g, grad_x.data_ptr<float>());
      grad_x = in_memory_format(grad_x, format);
    }
    if (param_grads) {
      raw = at::empty(weight.sizes(), xc.options().dtype(at::kFloat));
      gemm_1x1_weight_grad(dz.const_data_ptr<float>(), xc.const_data_ptr<float>(), pixels, C, g.in_c,
                           raw.data_ptr<float>(), strided ? &g : nullptr);
    }
  }
  return {grad_x, raw};
}

// dx for the grouped/KxK conv: register tiles over input rows, stride-spaced pixels.
template <int CIB, typename T>
void conv_input_grad(const ConvGeometry& g, const T* dz, const acc_t<T>* packed_t, T* dx) {
  using A = acc_t<T>;
  constexpr int PW = tile_pixels<A, CIB>;
  at::parallel_for(0, g.batch * g.in_h, 1, [&](int64_t row0, int64_t row1) {
    std::vector<T> zeros(g.out_c_per_group, T(0));
    using V = lane_t<A, CIB>;
    V acc[PW];
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t n = row / g.in_h, hi = row % g.in_h;
      for (int64_t group = 0; group < g.groups; ++group)
        for (int64_t ci0 = 0; ci0 < g.in_c_per_group; ci0 += CIB)
          for (int64_t residue = 0; residue < std::min(g.stride, g.in_w); ++residue)
            for (int64_t wi0 = residue; wi0 < g.in_w; wi0 += PW * g.stride) {
              const int npix = static_cast<int>(std::min<int64_t>(PW, (g.in_w - wi0 + g.stride - 1) / g.stride));
              kernels::conv_input_grad_tile<PW>(g, dz, packed_t, zeros.data(), n, hi, wi0, npix,
                                                     group, ci0, acc);
              for (int p = 0; p < npix; ++p) {
                kernels::lane_store(dx + kernels::nhwc_index(n, hi, wi0 + p * g.stride,
                                                             group * g.in_c_per_group + ci0, g.in_h,
                                                             g.in_w, g.in_c),
                                    acc[p]);
              }
            }
    }
  });
}

// Raw weight gradient (sum over pixels of x * dz) of the grouped/KxK conv, in the packed layout,
// accumulated per chunk of output rows and merged in chunk order.
template <int CIB, int COB, typename T>
std::vector<acc_t<T>> conv_weight_grad(const ConvGeometry& g, const T* x, const T* dz) {
  using A = acc_t<T>;
  const int64_t size = g.groups * g.kernel * g.kernel * g.in_c_per_group * g.out_c_per_group;
  const int64_t rows = g.batch * g.out_h, chunks = chunk_count(rows);
  const int64_t stride = chunk_stride(size, sizeof(A));
  std::vector<A> partial(chunks * stride, A(0));
  for_each_chunk(rows, chunks, [&](int64_t chunk, int64_t row0, int64_t row1) {
    A* buf = partial.data() + chunk * stride;
    using V = lane_t<A, COB>;
    V acc[CIB];
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t n = row / g.out_h, ho = row % g.out_h;
      for (int64_t group = 0; group < g.groups; ++group)
        for (int64_t kh = 0; kh < g.kernel; ++kh)
          for (int64_t kw = 0; kw < g.kernel; ++kw) {
            A* tap = buf + ((group * g.kernel + kh) * g.kernel + kw) * g.in_c_per_group * g.out_c_per_group;
            for (int64_t ci0 = 0; ci0 < g.in_c_per_group; ci0 += CIB)
              for (int64_t co0 = 0; co0 < g.out_c_per_group; co0 += COB) {
                for (int i = 0; i < CIB; ++i)
                  acc[i] = kernels::lane_load_acc<V>(tap + (ci0 + i) * g.out_c_per_group + co0);
                kernels::conv_weight_grad_tile<CIB>(g, x, dz, n, ho, 0, g.out_w, group, kh, kw,
                                                         ci0, co0, acc);
                for (int i = 0; i < CIB; ++i)
                  kernels::lane_store_acc(tap + (ci0 + i) * g.out_c_per_group + co0, acc[i]);
              }
          }
    }
  });
  merge_chunk_sums(partial, chunks, stride, size);
  return partial;
}

template <typename T>
Grads backward_impl(const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& x,
                    const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& bn_weight,
                    const at::Tensor& conv_out, const at::Tensor& mean_t, const at::Tensor& var_t,
                    const ConvGeometry& g, double eps, bool relu, bool training, bool input_grad,
                    bool param_grads, bool residual_grad) {
  using A = acc_t<T>;
  const at::MemoryFormat format = output_memory_format(x);
  const int64_t C = g.out_c, pixels = g.batch * g.out_h * g.out_w;
  // y only gives ReLU's mask: without ReLU it is not read (nor copied to NHWC).
  const at::Tensor dy = to_nhwc(grad_y), yc = relu ? to_nhwc(y) : at::Tensor();
  const at::Tensor zc = training ? to_nhwc(conv_out) : at::Tensor();
  const std::vector<A> mean = vector_of<A>(mean_t), var = vector_of<A>(var_t);
  const std::vector<A> gamma = vector_of<A>(bn_weight);
  std::vector<A> invstd(C), scale(C);
  for (int64_t c = 0; c < C; ++c) {
    invstd[c] = kernels::inv_std(var[c], static_cast<A>(eps));
    scale[c] = gamma[c] * invstd[c];
  }

  // Pass 1: g and its per-channel sums. Without ReLU g is dy, stored only as the residual's
  // gradient (an output may not alias grad_y); otherwise the passes read dy in its place.
  const bool g_is_dy = !relu && !residual_grad;
  at::Tensor grad_out = g_is_dy ? dy : empty_nhwc(x, g.batch, C, g.out_h, g.out_w);
  T* gp = g_is_dy ? nullptr : grad_out.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();
  const T* yp = relu ? yc.const_data_ptr<T>() : nullptr;
  const T* zp = training ? zc.data_ptr<T>() : nullptr;
  const int64_t grain = pass_grain(C), chunks = chunk_count((pixels + grain - 1) / grain);
  const int64_t stride = chunk_stride(C, sizeof(A));
  std::vector<A> sum_g(chunks * stride, A(0)), sum_gx(chunks * stride, A(0));
  for_each_chunk(pixels, chunks, [&](int64_t chunk, int64_t p0, int64_t p1) {
    A* sg = sum_g.data() + chunk * stride;
    A* sgx = sum_gx.data() + chunk * stride;
    const auto rows_of = [&](auto* base) { return base ? base + p0 * C : nullptr; };
    passes::relu_grad_sums(rows_of(gp), dyp + p0 * C, rows_of(yp), rows_of(zp), mean.data(), invstd.data(),
                           p1 - p0, C, relu, sg, sgx);
  });
  std::vector<kernels::BnGradSums<A>> sums(C);
  for (int64_t c = 0; c < C; ++c) {
    sums[c] = {sum_g[c], sum_gx[c]};
    for (int64_t chunk = 1; chunk < chunks; ++chunk)
      kernels::bn_grad_sums_merge(sums[c],
                                  kernels::BnGradSums<A>{sum_g[chunk * stride + c], sum_gx[chunk * stride + c]});
  }

  // Training: dz from the batch-statistics backward (pass 2); eval: the conv sees g itself.
  at::Tensor dz = grad_out;
  if (training) {
    // dz overwrites g in place (same element, read then written) when g is ours and not returned.
    dz = residual_grad || g_is_dy ? empty_nhwc(x, g.batch, C, g.out_h, g.out_w) : grad_out;
    T* dzp = dz.data_ptr<T>();
    const T* gp_in = grad_out.const_data_ptr<T>();
    std::vector<A> mean_g(C), mean_gx(C);
    for (int64_t c = 0; c < C; ++c) {
      mean_g[c] = sums[c].sum_g / static_cast<A>(pixels);
      mean_gx[c] = sums[c].sum_g_xhat / static_cast<A>(pixels);
    }
    at::parallel_for(0, pixels, grain, [&](int64_t p0, int64_t p1) {
      passes::bn_input_grad_rows(dzp + p0 * C, gp_in + p0 * C, zp + p0 * C, mean.data(), invstd.data(),
                                 scale.data(), mean_g.data(), mean_gx.data(), p1 - p0, C);
    });
  }
  const T* dzp = dz.data_ptr<T>();
  const at::Tensor xc = to_nhwc(x);
  const auto acc_dtype = c10::CppTypeToScalarType<A>::value;
  const at::Tensor scale_t = tensor_of(scale, x.options());

  // The conv's gradients: grad_x (input_grad) and raw (param_grads), raw[co][ci][kh][kw] = sum
  // over pixels of x * (dz or g), from ATen in x's dtype, from our tiles in the accumulation type.
  // oneDNN's conv backward unless REGNET_EXT_CPU_CONV=tiles (see use_own_conv_tiles), except
  // where the plan takes the weight gradient from our tiles or the input gradient from Winograd
  // (the rules: use_own_weight_grad, use_winograd_per_call; or the autotuner's timing) or both
  // gradients of a 1x1 conv from two GEMMs (use_gemm_backward); eval differentiates through the
  // folded weight W', whose gradient is the raw one.
  const bool tiles = use_own_conv_tiles(g);
  // oneDNN's weight gradient of a strided 1x1 conv in channels_last writes past its
  // reduce-to-unit-stride workspace when the input has fewer channels than its channel block
  // (uxlfoundation/oneDNN#6035; here, torch 2.14.1, 2 threads: 8 or 12 input channels crashed
  // later in an unrelated allocation, 16 to 104 ran clean and exact). Below 32 input channels
  // (a margin over the 16-wide AVX-512 block) that gradient comes from the stride-1 kernel over
  // the subsampled input instead (see below); RegNets' strided 1x1 convs have 32 or more.
  const bool strided_gemm_unsafe = is_plain_gemm(g) && g.stride > 1 && g.in_c < 32;
  auto conv_grads = [&](ConvKernel plan) -> std::pair<at::Tensor, at::Tensor> {
    if (plan == ConvKernel::kGemmTiles) return gemm_tiles_grads<T>(dz, xc, weight, scale_t, g, training, input_grad,
                                                                   param_grads, format);
    const bool aten = !tiles && plan != ConvKernel::kGemm;  // else our code or ATen's GEMMs
    const bool own_weight_grad = plan == ConvKernel::kOwnWeightGrad || plan == ConvKernel::kWinogradDxOwnWeightGrad ||
                                 plan == ConvKernel::kNarrowDxOwnWeightGrad;
    // The input gradient of a stride-1 conv is a stride-1 conv of dz (kernels flipped, channels
    // swapped), which the Winograd and narrow-group kernels run where they run the forward (same
    // geometry: as many input as output channels, padding k/2).
    const bool winograd_dx =
        input_grad && (plan == ConvKernel::kWinogradDx || plan == ConvKernel::kWinogradDxOwnWeightGrad);
    const bool narrow_dx = input_grad && (plan == ConvKernel::kNarrowDx || plan == ConvKernel::kNarrowDxOwnWeightGrad);
    const bool aten_weight_grad = aten && !own_weight_grad && !strided_gemm_unsafe;
    const bool aten_dx = input_grad && !winograd_dx && !narrow_dx;
    at::Tensor grad_x = at::empty({0}, x.options()), raw;
    if (aten && (aten_dx || (param_grads && aten_weight_grad))) {
      at::Tensor w = weight;
      if (!training) w = (w.to(acc_dtype) * scale_t.view({C, 1, 1, 1})).to(x.scalar_type());
      auto grads = at::convolution_backward(dz, xc, w, std::nullopt,
                                            {g.stride, g.stride}, {g.padding, g.padding}, {1, 1}, false,
                                            {0, 0}, g.groups, {aten_dx, param_grads && aten_weight_grad, false});
      if (aten_dx) grad_x = std::get<0>(grads);
      // Kept in oneDNN's layout (normally the weight's): see in_layout_of below. And in its
      // dtype: a 16-bit gradient gains nothing from a float copy (two conversions of the whole
      // weight gradient cost 0.6 ms of a 3.4 ms bfloat16 backward at 1088 channels, batch 1, 7px).
      if (param_grads && aten_weight_grad) raw = std::get<1>(grads);
    }
    if (winograd_dx) {
      if constexpr (std::is_same_v<T, float>) {
        at::Tensor w = weight;
        if (!training) w = w.to(acc_dtype) * scale_t.view({C, 1, 1, 1});
        const at::Tensor packed = pack_winograd_weight(w, g, /*transposed=*/true);
        grad_x = empty_nhwc(x, g.batch, g.in_c, g.in_h, g.in_w);
        grouped_conv_winograd(g, dzp, packed.const_data_ptr<float>(), nullptr, nullptr, grad_x.data_ptr<float>(),
                              false);
      }
    }
    if (narrow_dx) {
      if constexpr (std::is_same_v<T, float>) {
        at::Tensor w = weight.to(acc_dtype);
        if (!training) w = w * scale_t.view({C, 1, 1, 1});
        // Each group's weight transposed (input and output channels swapped); stride 1 also
        // flips the kernel (the forward kernel runs it), stride 2 reads the taps as they are.
        const at::Tensor packed = pack_narrow_group_weight(
            w, g, g.stride == 1 ? NarrowPacking::kInputGradFlipped : NarrowPacking::kInputGrad);
        grad_x = empty_nhwc(x, g.batch, g.in_c, g.in_h, g.in_w);
        if (g.stride == 2)
          grouped_conv_narrow_stride2_input_grad(g, dzp, packed.const_data_ptr<float>(), grad_x.data_ptr<float>());
        else
          grouped_conv_narrow(g, dzp, packed.const_data_ptr<float>(), nullptr, nullptr, grad_x.data_ptr<float>(),
                              false);
      }
    }
    if (input_grad && aten) {
      grad_x = in_memory_format(grad_x, format);
    } else if (input_grad) {
      if (is_plain_gemm(g)) {
        at::Tensor w = weight.reshape({C, g.in_c});
        if (!training) w = (w.to(acc_dtype) * scale_t.unsqueeze(1)).to(x.scalar_type());
        const at::Tensor rows = at::mm(as_rows(dz), w);  // [N*Ho*Wo, C_in], contiguous
        if (g.stride == 1) {
          grad_x = rows.view({g.batch, g.out_h, g.out_w, g.in_c}).permute({0, 3, 1, 2});
        } else {
          grad_x = empty_nhwc(x, g.batch, g.in_c, g.in_h, g.in_w);
          scatter_strided_rows(rows.const_data_ptr<T>(), g, grad_x.data_ptr<T>());
        }
      } else {
        const at::Tensor packed_t = pack_weight<T>(weight, g, training ? nullptr : scale.data(), /*transposed=*/true);
        grad_x = empty_nhwc(x, g.batch, g.in_c, g.in_h, g.in_w);
        dispatch_block(channel_block(g.in_c_per_group), [&](auto block) {
          conv_input_grad<decltype(block)::value>(g, dzp, packed_t.data_ptr<A>(), grad_x.data_ptr<T>());
        });
      }
      grad_x = in_memory_format(grad_x, format);
    }
    if (!param_grads || aten_weight_grad) return {grad_x, raw};
    if (is_plain_gemm(g) && aten) {
      // Strided, few input channels: the weight gradient of the stride-1 conv over every
      // stride-th pixel, so that oneDNN's stride-1 kernel runs (not the strided one above);
      // at::mm would be MKL's sgemm, at half of oneDNN's rate on the AMD CPU this was tuned on.
      const at::Tensor sub = xc.slice(2, 0, g.in_h, g.stride).slice(3, 0, g.in_w, g.stride)
                                 .contiguous(at::MemoryFormat::ChannelsLast);
      raw = std::get<1>(at::convolution_backward(dz, sub, weight,
                                                 std::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, 1,
                                                 {false, true, false}));
    } else if (is_plain_gemm(g)) {
      raw = at::mm(as_rows(dz).t(), gemm_rows(xc, g)).view(weight.sizes());
    } else if (!tiles && wide_group_applies(g, x.scalar_type())) {  // float32 (grouped_conv_wide_weight_grad.h)
      raw = at::empty(weight.sizes(), x.options().dtype(at::kFloat));
      if constexpr (std::is_same_v<T, float>)
        grouped_conv_wide_weight_grad(g, xc.const_data_ptr<float>(), dzp, raw.data_ptr<float>());
    } else {
      std::vector<A> packed_raw;
      // Input channels per tile: as many accumulator lanes as divide the group (16 was 5% faster
      // than 8, 8 10-30% faster than 4 on RegNet's grouped 3x3 shapes at batch 8).
      const int cib = g.in_c_per_group % 16 == 0 ? 16 : g.in_c_per_group % 8 == 0 ? 8
                    : g.in_c_per_group % 4 == 0 ? 4 : 1;
#if defined(__AVX512F__)
      // RegNet's narrow-group 3x3s: accumulators kept in registers over bands of rows. Against
      // the tiles below (whole backward, interleaved, Ice Lake VM, 2026-12-06): 1.15-1.49x at 16
      // per group, 1.04-1.33x at 8; the autotuner then took it over oneDNN's weight gradient on
      // most of RegNetX/Y-400MF's batch-8 shapes (whole training steps 1.01-1.05x).
      if constexpr (std::is_same_v<T, float>) {
        if (narrow_weight_grad_applies(g))
          packed_raw = grouped_conv_narrow_weight_grad(g, xc.data_ptr<float>(), dzp);
      }
#endif
      // Every other grouped conv: the generic tiles.
      if (packed_raw.empty()) dispatch_block(channel_block(g.out_c_per_group), [&](auto co_block) {
        constexpr int COB = decltype(co_block)::value;
        if (cib == 16)
          packed_raw = conv_weight_grad<16, COB>(g, xc.data_ptr<T>(), dzp);
        else if (cib == 8)
          packed_raw = conv_weight_grad<8, COB>(g, xc.data_ptr<T>(), dzp);
        else if (cib == 4)
          packed_raw = conv_weight_grad<4, COB>(g, xc.data_ptr<T>(), dzp);
        else
          packed_raw = conv_weight_grad<1, COB>(g, xc.data_ptr<T>(), dzp);
      });
      // In the weight's own layout (empty_like keeps it): see in_layout_of below.
      raw = at::empty_like(weight, weight.options().dtype(acc_dtype));
      A* rp = raw.data_ptr<A>();
      const auto st = raw.strides();
      for (int64_t co = 0; co < C; ++co)
        for (int64_t ci = 0; ci < g.in_c_per_group; ++ci)
          for (int64_t kh = 0; kh < g.kernel; ++kh)
            for (int64_t kw = 0; kw < g.kernel; ++kw)
              rp[co * st[0] + ci * st[1] + kh * st[2] + kw * st[3]] =
                  packed_raw[kernels::conv_pack_index(g, co, ci, kh, kw)];
    }
    return {grad_x, raw};
  };
  const bool rule_own_weight_grad = use_own_weight_grad(g, x.scalar_type());
  const bool rule_winograd_dx = input_grad && !tiles && use_winograd_per_call(g, x.scalar_type());
  const bool rule_narrow_dx = input_grad && !tiles && use_narrow_input_grad(g, x.scalar_type());
  const ConvKernel rule =
      use_gemm_tiles(g, x.scalar_type()) ? ConvKernel::kGemmTiles
      : use_gemm_backward(g, x.scalar_type()) ? ConvKernel::kGemm
      : rule_winograd_dx ? (rule_own_weight_grad ? ConvKernel::kWinogradDxOwnWeightGrad : ConvKernel::kWinogradDx)
      : rule_narrow_dx ? (rule_own_weight_grad ? ConvKernel::kNarrowDxOwnWeightGrad : ConvKernel::kNarrowDx)
      : rule_own_weight_grad ? ConvKernel::kOwnWeightGrad : ConvKernel::kOneDnn;
  const ConvPass pass = !param_grads ? ConvPass::kBackwardInput
                        : !input_grad ? ConvPass::kBackwardWeight : ConvPass::kBackward;
  const ConvKernel plan = choose_conv_kernel(pass, x.scalar_type(), g, false, false,
                                             backward_conv_plans(g, x.scalar_type(), input_grad, param_grads), rule,
                                             [&](ConvKernel k) { conv_grads(k); });
  auto [grad_x, raw] = conv_grads(plan);

  at::Tensor grad_w = at::empty({0}, weight.options()), grad_b = at::empty({0}, weight.options());
  at::Tensor grad_gamma = at::empty({0}, weight.options()), grad_beta = at::empty({0}, weight.options());
  if (param_grads) {
    std::vector<A> dgamma(C), dbeta(C), dbias(C);
    if (training) {
      grad_w = in_layout_of(raw.to(weight.scalar_type()), weight);
      for (int64_t c = 0; c < C; ++c) {
        dgamma[c] = sums[c].sum_g_xhat;
        dbeta[c] = sums[c].sum_g;
        dbias[c] = kernels::bn_train_conv_bias_grad<A>();
      }
    } else {
      grad_w = in_layout_of((raw * scale_t.view({C, 1, 1, 1})).to(weight.scalar_type()), weight);
      const at::Tensor dot = (raw * weight.to(acc_dtype)).sum({1, 2, 3});
      const std::vector<A> dots = vector_of<A>(dot);
      const std::vector<A> conv_bias = bias.defined() ? vector_of<A>(bias) : std::vector<A>(C, A(0));
      for (int64_t c = 0; c < C; ++c) {
        dgamma[c] = kernels::bn_fold_gamma_grad(dots[c], sums[c].sum_g, conv_bias[c], mean[c], invstd[c]);
        dbeta[c] = sums[c].sum_g;
        dbias[c] = sums[c].sum_g * scale[c];
      }
    }
    auto to_param = [&](const std::vector<A>& v) { return tensor_of(v, x.options()).to(bn_weight.scalar_type()); };
    grad_gamma = to_param(dgamma);
    grad_beta = to_param(dbeta);
    if (bias.defined()) grad_b = to_param(dbias);
  }
  at::Tensor grad_residual = residual_grad ? in_memory_format(grad_out, format) : at::empty({0}, x.options());
  return {grad_x, grad_w, grad_b, grad_gamma, grad_beta, grad_residual};
}

Grads conv_bn_act_backward_cpu(const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& x,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const at::Tensor& bn_weight, const std::optional<at::Tensor>& conv_out,
                               const at::Tensor& mean, const at::Tensor& var, int64_t stride,
                               int64_t padding, int64_t groups, double eps, bool relu, bool training,
                               bool input_grad, bool param_grads, bool residual_grad) {
  const at::Tensor b = bias.value_or(at::Tensor()), z = conv_out.value_or(at::Tensor());
  const ConvGeometry g = checks::check_conv_bn_act_backward(kOp, grad_y, y, x, weight, b, bn_weight, z, mean,
                                                            var, stride, padding, groups, training);
  checks::check_eps(kOp, eps);
  Grads out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), kOp, [&] {
    out = backward_impl<scalar_t>(grad_y, y, x, weight, b, bn_weight, z, mean, var, g, eps, relu,
                                  training, input_grad, param_grads, residual_grad);
  });
  return out;
}

}  // namespace
}  // namespace regnet_ext::cpu

TORCH_LIBRARY_IMPL(regnet_ext, CPU, m) {
  m.impl("conv_bn_act_backward", &regnet_ext::cpu::conv_bn_act_backward_cpu);
}
