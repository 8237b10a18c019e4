// CPU forward of conv_bn_act (eval and training) and the running-statistics update.
//
// Schedules (all in channels_last; NCHW inputs are converted in and out):
//  * eval: BN folded into the weights and bias; oneDNN's conv with the residual add and ReLU as
//    fused post-ops writes y once (cpu/onednn_fused_conv.h); the folded weight is packed for
//    oneDNN once per change of the parameters (cpu/folded_weight_cache.h). Float32 grouped
//    convs that our AVX-512 kernels can compute (grouped_conv_narrow.h, grouped_conv_winograd.h)
//    run whichever of theirs and oneDNN's the autotuner found faster (conv_autotune.h), with
//    the same epilogue. With REGNET_EXT_CPU_CONV=tiles,
//    each register tile of our own conv (kernels::conv_tile) gets shift, residual and ReLU in
//    registers and is stored once.
//  * eval, 1x1 ungrouped conv: oneDNN as above, or where the autotuner found it faster our GEMM
//    tiles with the epilogue in registers (float32, AVX-512: gemm_1x1_tiles.h) or one GEMM over
//    all N*H*W rows through ATen (the folded weight transposed once per change) and our epilogue
//    pass (shift, residual, ReLU) in place; the training forward likewise for z (oneDNN, ATen
//    or the GEMM tiles, packing the weight on each call).
//  * eval and training, dense conv with a few input channels (the stem), float32, AVX-512: our
//    tiles (stem_conv_tiles.h; eval with the epilogue in registers, training for z).
//  * eval, 1x1 ungrouped conv with REGNET_EXT_CPU_CONV=tiles: a GEMM with the folded weights
//    through ATen, one block of rows at a time, the epilogue applied while the block is in cache.
//  * training: oneDNN (or, as in eval, one of our kernels) computes z = conv(x) + b; pass 1
//    takes z's moments per block of rows (mean, then squared deviations), merged per chunk with
//    Chan's formula; pass 2 normalises z (+ residual, ReLU) into y. With
//    REGNET_EXT_CPU_CONV=tiles our conv tiles (or the blocked GEMM for 1x1 convs) produce z and
//    the moments come from the same cache-hot tiles; so do our 1x1 GEMM tiles where they compute
//    z (float32, AVX-512), their moments merged per tile in registers (no pass 1). z is kept
//    for the backward, which needs it for x-hat.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "checks.h"
#include "cpu/channel_passes.h"
#include "cpu/conv_autotune.h"
#include "cpu/conv_bn_act_cpu.h"
#include "cpu/folded_weight_cache.h"
#include "cpu/onednn_fused_conv.h"
#include "kernels/bn_stats.h"
#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {
namespace {

using kernels::ChannelAffine;
using kernels::load_acc;
using kernels::MomentStats;
using kernels::store_as;

constexpr const char* kOp = "conv_bn_act";
// Rows of the GEMM computed per ATen call: big enough for an efficient GEMM, small enough that
// the block is still in L2 when the epilogue runs over it.
constexpr int64_t kGemmRowBlock = 128;
constexpr int64_t kGemmBlockBytes = int64_t(1) << 20;

// Per-call overhead dominates small GEMMs, so use about four blocks per thread, as long as a
// block's input and output rows still fit the L2 budget.
int64_t gemm_row_block(int64_t rows, int64_t in_c, int64_t out_c, int64_t elem_size) {
  const int64_t parts = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t even = (rows + parts - 1) / parts;
  const int64_t fits = std::max(kGemmRowBlock, kGemmBlockBytes / ((in_c + out_c) * elem_size));
  return std::clamp(even, kGemmRowBlock, fits);
}

template <typename T>
std::vector<acc_t<T>> acc_vector(const at::Tensor& t, int64_t length) {
  std::vector<acc_t<T>> out(length, acc_t<T>(0));
  if (!t.defined()) return out;
  const at::Tensor c = t.contiguous();
  const T* p = c.data_ptr<T>();
  for (int64_t i = 0; i < length; ++i) out[i] = load_acc(p[i]);
  return out;
}

// The GEMM operand layout of an NHWC tensor [N, C, H, W]: [N*H*W, C] rows.
inline at::Tensor as_rows(const at::Tensor& nhwc) {
  return nhwc.permute({0, 2, 3, 1}).view({-1, nhwc.size(1)});
}

// A 1x1 conv, no epilogue, as one GEMM over every output pixel: [N*Ho*Wo, C_in] x w_t ([C_in, C_out]),
// written into a fresh NHWC tensor.
inline at::Tensor gemm_conv(const at::Tensor& x_nhwc, const at::Tensor& w_t, const ConvGeometry& g) {
  at::Tensor out = empty_nhwc(x_nhwc, g.batch, g.out_c, g.out_h, g.out_w);
  at::Tensor out_rows = as_rows(out);
  at::mm_out(out_rows, gemm_rows(x_nhwc, g), w_t);
  return out;
}

// Layouts of a cached folded weight (FoldKey::layout).
enum FoldLayout : int { kOneDnnLayout = 0, kNarrowGroupLayout = 1, kWinogradLayout = 2, kGemmLayout = 3,
                        kGemmTilesLayout = 4, kStemTilesLayout = 5, kWideGroupLayout = 6 };

// The cache key of this call's folded weight, or nullopt where the cache is turned off or a
// tensor has no version counter (an inference tensor).
std::optional<FoldKey> fold_key(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& mean,
                                const at::Tensor& var, const ConvGeometry& g, double eps, FoldLayout layout) {
  if (!folded_weight_cache_enabled()) return std::nullopt;
  const int64_t batch = layout == kOneDnnLayout ? g.batch : 0;  // only oneDNN packs for a batch size
  FoldKey key{{}, eps, {g.in_c, g.in_h, g.in_w, g.stride, g.padding, g.groups, batch}, x.scalar_type(), layout};
  const at::Tensor* tensors[] = {&weight, &bias, &gamma, &beta, &mean, &var};
  for (size_t i = 0; i < key.tensors.size(); ++i) {
    std::optional<TensorStamp> s = stamp_of(*tensors[i]);
    if (!s) return std::nullopt;
    key.tensors[i] = std::move(*s);
  }
  return key;
}

template <typename T>
at::Tensor eval_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& bn_weight, const at::Tensor& bn_bias,
                        const at::Tensor& running_mean, const at::Tensor& running_var,
                        const at::Tensor& residual, const ConvGeometry& g, double eps, bool relu) {
  using A = acc_t<T>;
  // BN folded per channel (scale, shift; ones: a unit scale), worked out where a schedule first
  // needs them: a call whose folded weight and bias come from the cache needs none.
  std::vector<A> scale, shift, ones;
  auto fold_vectors = [&] {
    if (!ones.empty()) return;
    const auto gamma = acc_vector<T>(bn_weight, g.out_c), beta = acc_vector<T>(bn_bias, g.out_c);
    const auto mean = acc_vector<T>(running_mean, g.out_c), var = acc_vector<T>(running_var, g.out_c);
    const auto conv_bias = acc_vector<T>(bias, g.out_c);
    scale.resize(g.out_c);
    shift.resize(g.out_c);
    for (int64_t c = 0; c < g.out_c; ++c) {
      const ChannelAffine<A> f =
          kernels::bn_fold(gamma[c], beta[c], mean[c], var[c], static_cast<A>(eps), conv_bias[c]);
      scale[c] = f.scale;
      shift[c] = f.shift;
    }
    ones.assign(g.out_c, A(1));
  };
  const at::Tensor xc = to_nhwc(x);
  const at::Tensor res = residual.defined() ? to_nhwc(residual) : at::Tensor();
  const T* rp = res.defined() ? res.data_ptr<T>() : nullptr;
  // Each schedule allocates y itself (oneDNN returns its own output): an activation-sized
  // allocation that nobody writes still costs an mmap.
  at::Tensor y;
  T* yp = nullptr;

  // out = act(out * scale + shift [+ residual]), in place, NHWC.
  auto epilogue_in_place = [&](at::Tensor& out, const A* scale_p, const A* shift_p) {
    T* op = out.data_ptr<T>();
    const int64_t pixels = g.batch * g.out_h * g.out_w;
    at::parallel_for(0, pixels, pass_grain(g.out_c), [&](int64_t p0, int64_t p1) {
      passes::normalize_rows(op + p0 * g.out_c, op + p0 * g.out_c, rp ? rp + p0 * g.out_c : nullptr, scale_p,
                             shift_p, p1 - p0, g.out_c, relu);
    });
  };

  // (W', b'): the folded weight and bias in x's dtype. The bias is copied: shift views this
  // call's stack, and the cache keeps the bias.
  auto fold = [&] {
    fold_vectors();
    const at::Tensor scale_t = at::from_blob(scale.data(), {g.out_c, 1, 1, 1},
                                             weight.options().dtype(c10::CppTypeToScalarType<A>::value));
    const at::Tensor shift_t = at::from_blob(shift.data(), {g.out_c}, scale_t.options());
    return std::make_pair((weight.to(scale_t.scalar_type()) * scale_t).to(x.scalar_type()),
                          shift_t.to(x.scalar_type(), /*non_blocking=*/false, /*copy=*/true));
  };

  // The whole call with one kernel (conv_autotune.h), y in NHWC:
  //  * ours: 8 or 16 channels per group (narrow; AVX-512 or AVX2), or 32-128 at stride 1 (Winograd,
  //    AVX-512), or a 1x1 conv (GEMM tiles, AVX-512), the folded weight packed for the kernel
  //    once per change (bfloat16 narrow: the weight unfolded, BN's scale in the epilogue);
  //  * oneDNN: act(conv(x, W') + b' [+ residual]) in one pass, with W' packed once per change of
  //    the parameters where the cache applies; where oneDNN cannot fuse the epilogue (float64),
  //    conv(x, W') + b' and our epilogue pass in place.
  auto run_eval = [&](ConvKernel kernel) -> at::Tensor {
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      // The bfloat16 narrow kernel with BN's scale and shift in float32 in its epilogue, the
      // weight as given: folding the scale into a bfloat16 weight rounds it, which sent 1.3x as
      // many pre-activations near zero across the ReLU as plain PyTorch's bfloat16 conv and BN
      // (against float64, 30 random cases), and 1.9x through oneDNN's folded conv.
      if (kernel == ConvKernel::kNarrow) {
        auto make = [&] {  // bias: [scale; shift], float
          fold_vectors();
          at::Tensor affine = at::empty({2, g.out_c}, weight.options().dtype(at::kFloat));
          std::copy(scale.begin(), scale.end(), affine.data_ptr<float>());
          std::copy(shift.begin(), shift.end(), affine.data_ptr<float>() + g.out_c);
          return FoldedWeights{pack_narrow_group_weight_bf16(weight, g), affine};
        };
        const std::optional<FoldKey> key = fold_key(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                                    g, eps, kNarrowGroupLayout);
        const FoldedWeights w = key ? FoldedWeightCache::instance().get(*key, make) : make();
        at::Tensor out = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
        const float* affine = w.bias.const_data_ptr<float>();
        grouped_conv_narrow_bf16(g, xc.const_data_ptr<c10::BFloat16>(), w.packed_weight.const_data_ptr<c10::BFloat16>(),
                                 affine, affine + g.out_c, rp, out.data_ptr<c10::BFloat16>(), relu);
        return out;
      }
    }
    if (kernel == ConvKernel::kGemm) {  // one GEMM over every output pixel, then the epilogue
      auto make = [&] {  // no bias kept: the epilogue adds this call's shift
        return FoldedWeights{fold().first.reshape({g.out_c, g.in_c}).t().contiguous(), at::Tensor()};
      };
      const std::optional<FoldKey> key = fold_key(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                                  g, eps, kGemmLayout);
      at::Tensor out = gemm_conv(xc, (key ? FoldedWeightCache::instance().get(*key, make) : make()).packed_weight, g);
      fold_vectors();
      epilogue_in_place(out, ones.data(), shift.data());
      return out;
    }
    if (kernel == ConvKernel::kGemmTiles || kernel == ConvKernel::kStemTiles) {  // float32 only (*_apply)
      at::Tensor out;
      if constexpr (std::is_same_v<T, float>) {
        const bool stem = kernel == ConvKernel::kStemTiles;
        auto make = [&] {
          auto [folded, folded_bias] = fold();
          return FoldedWeights{stem ? pack_stem_tiles_weight(folded) : pack_gemm_tiles_weight(folded),
                               padded_to_vectors(folded_bias, g.out_c, folded_bias.options())};
        };
        const std::optional<FoldKey> key = fold_key(x, weight, bias, bn_weight, bn_bias, running_mean, running_var,
                                                    g, eps, stem ? kStemTilesLayout : kGemmTilesLayout);
        const FoldedWeights w = key ? FoldedWeightCache::instance().get(*key, make) : make();
        out = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
        if (stem)
          stem_conv_tiles(g, xc.const_data_ptr<float>(), w.packed_weight.const_data_ptr<float>(),
                          w.bias.const_data_ptr<float>(), rp, out.data_ptr<float>(), relu);
        else
          gemm_1x1_tiles(xc.const_data_ptr<float>(), g.batch, g.in_h, g.in_w, g.in_c, g.stride,
                         w.packed_weight.const_data_ptr<float>(), w.bias.const_data_ptr<float>(), rp,
                         out.data_ptr<float>(), g.out_c, relu);
      }
      return out;
    }
    if (kernel != ConvKernel::kOneDnn) {
      at::Tensor out;
      if constexpr (std::is_same_v<T, float>) {
        const bool narrow = kernel == ConvKernel::kNarrow, wide = kernel == ConvKernel::kWideGroup;
        auto make = [&] {
          auto [folded, folded_bias] = fold();
          return FoldedWeights{narrow ? pack_narrow_group_weight(folded, g)
                               : wide ? pack_wide_group_weight(folded, g)
                                      : pack_winograd_weight(folded, g),
                               folded_bias};
        };
        const std::optional<FoldKey> key =
            fold_key(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, g, eps,
                     narrow ? kNarrowGroupLayout : wide ? kWideGroupLayout : kWinogradLayout);
        const FoldedWeights w = key ? FoldedWeightCache::instance().get(*key, make) : make();
        out = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
        const auto conv = narrow ? grouped_conv_narrow : wide ? grouped_conv_wide : grouped_conv_winograd;
        conv(g, xc.const_data_ptr<float>(), w.packed_weight.const_data_ptr<float>(), w.bias.const_data_ptr<float>(),
             rp, out.data_ptr<float>(), relu);
      }
      return out;
    }
    const auto dtype = x.scalar_type();
    const bool cacheable = (dtype == at::kFloat || dtype == at::kBFloat16) && onednn_fusable(dtype, res.defined(), g.groups);
    const std::optional<FoldKey> key =
        cacheable ? fold_key(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, g, eps, kOneDnnLayout)
                  : std::nullopt;
    if (key) {
      const FoldedWeights cached = FoldedWeightCache::instance().get(*key, [&] {
        const auto [folded, folded_bias] = fold();
        return FoldedWeights{onednn_pack_conv_weight(folded.contiguous(at::MemoryFormat::ChannelsLast), g, xc),
                             folded_bias};
      });
      if (cached.packed_weight.defined()) {
        const at::Tensor fused =
            onednn_fused_conv(xc, cached.packed_weight, cached.bias, res, g, relu, /*weight_packed=*/true);
        if (fused.defined()) return fused;
      }
    }
    const auto [folded, folded_bias] = fold();
    const at::Tensor fused = onednn_fused_conv(xc, folded, folded_bias, res, g, relu);
    if (fused.defined()) return fused;
    at::Tensor out = aten_conv(xc, folded, folded_bias, g);
    if (relu || rp) {
      const std::vector<A> zeros(g.out_c, A(0));
      epilogue_in_place(out, ones.data(), zeros.data());
    }
    return out;
  };

  if (use_blocked_gemm(g)) {
    fold_vectors();
    y = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
    yp = y.data_ptr<T>();
    const at::Tensor scale_t =
        at::from_blob(scale.data(), {g.out_c, 1}, weight.options().dtype(c10::CppTypeToScalarType<A>::value));
    const at::Tensor folded = (weight.reshape({g.out_c, g.in_c}).to(scale_t.scalar_type()) * scale_t)
                                  .to(x.scalar_type()).t();
    const at::Tensor rows = gemm_rows(xc, g);
    const at::Tensor y_rows = as_rows(y);
    const int64_t m = rows.size(0);
    const int64_t row_block = gemm_row_block(m, g.in_c, g.out_c, x.element_size());
    const int64_t blocks = (m + row_block - 1) / row_block;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * row_block, r1 = std::min(m, r0 + row_block);
        at::Tensor out = y_rows.slice(0, r0, r1);
        at::mm_out(out, rows.slice(0, r0, r1), folded);
        T* block = yp + r0 * g.out_c;
        passes::normalize_rows(block, block, rp ? rp + r0 * g.out_c : nullptr, ones.data(),
                               shift.data(), r1 - r0, g.out_c, relu);
      }
    });
  } else {
    const ConvKernel rule = use_wide_group(g, x.scalar_type())          ? ConvKernel::kWideGroup
                            : use_narrow_group_kernel(g, x.scalar_type()) ? ConvKernel::kNarrow
                            : use_winograd_kernel(g, x.scalar_type())  ? ConvKernel::kWinograd
                            : use_gemm_tiles(g, x.scalar_type())       ? ConvKernel::kGemmTiles
                            : use_stem_tiles(g, x.scalar_type())       ? ConvKernel::kStemTiles
                            : use_gemm_kernel(g, x.scalar_type())      ? ConvKernel::kGemm
                                                                        : ConvKernel::kOneDnn;
    const ConvKernel kernel = choose_conv_kernel(ConvPass::kEval, x.scalar_type(), g, relu, res.defined(),
                                                 forward_conv_kernels(ConvPass::kEval, g, x.scalar_type()), rule,
                                                 [&](ConvKernel k) { run_eval(k); });
    if (kernel != ConvKernel::kOneDnn || !use_own_conv_tiles(g))
      return in_memory_format(run_eval(kernel), output_memory_format(x));
    fold_vectors();
    y = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
    yp = y.data_ptr<T>();
    const at::Tensor packed = pack_weight<T>(weight, g, scale.data(), /*transposed=*/false);
    const A* wp = packed.data_ptr<A>();
    const T* xp = xc.data_ptr<T>();
    const int64_t rows = g.batch * g.out_h;
    dispatch_block(channel_block(g.out_c_per_group), [&](auto block) {
      constexpr int COB = decltype(block)::value;
      at::parallel_for(0, rows, 1, [&](int64_t row0, int64_t row1) {
        conv_rows<COB>(g, xp, wp, row0, row1,
                       [&](int64_t n, int64_t ho, int64_t wo0, int npix, int64_t co,
                           const auto& acc) {
                         // One lane (COB channels, SIMD on the CPU) per pixel.
                         using V = lane_t<A, COB>;
                         const V sh = kernels::lane_load_acc<V>(shift.data() + co);
                         const ChannelAffine<V> affine{sh * A(0) + A(1), sh};
                         for (int p = 0; p < npix; ++p) {
                           const int64_t at = kernels::nhwc_index(n, ho, wo0 + p, co, g.out_h, g.out_w, g.out_c);
                           const V r = rp ? kernels::lane_load<V>(rp + at) : V{};
                           kernels::lane_store(yp + at, kernels::conv_epilogue(
                               kernels::lane_load_acc<V>(acc[p]), affine, r, relu));
                         }
                       });
      });
    });
  }
  return in_memory_format(y, output_memory_format(x));
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> train_forward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& bn_weight, const at::Tensor& bn_bias, const at::Tensor& residual,
    const ConvGeometry& g, double eps, bool relu) {
  using A = acc_t<T>;
  const auto conv_bias = acc_vector<T>(bias, g.out_c);
  const at::Tensor xc = to_nhwc(x);
  at::Tensor z;
  T* zp = nullptr;
  const int64_t pixels = g.batch * g.out_h * g.out_w;

  // Pass 1: z and its per-channel moments, per chunk.
  int64_t chunks;
  std::vector<MomentStats<A>> stats;
  const int64_t stride = chunk_stride(g.out_c, sizeof(MomentStats<A>));
  const bool gemm = use_blocked_gemm(g), tiles = !gemm && use_own_conv_tiles(g);
  bool moments_taken = false;
  if (gemm || tiles) {
    z = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
  } else {
    // z = conv(x) + b from oneDNN or our kernels (see eval_forward), which pack the
    // weight on every call; the timing (conv_autotune.h) includes that.
    auto conv = [&](ConvKernel kernel, MomentStats<A>* tile_stats = nullptr) -> at::Tensor {
      if (kernel == ConvKernel::kOneDnn) return aten_conv(xc, weight, bias, g);
      if (kernel == ConvKernel::kGemm) {  // one GEMM over every output pixel (+ b in place)
        at::Tensor out = gemm_conv(xc, weight.reshape({g.out_c, g.in_c}).t(), g);
        if (bias.defined()) as_rows(out).add_(bias);
        return out;
      }
      at::Tensor out = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
      if (kernel == ConvKernel::kGemmTiles) {  // float32 only (gemm_tiles_apply)
        if constexpr (std::is_same_v<T, float>) {
          gemm_1x1_tiles(xc.const_data_ptr<float>(), g.batch, g.in_h, g.in_w, g.in_c, g.stride,
                         pack_gemm_tiles_weight(weight).const_data_ptr<float>(),
                         padded_to_vectors(bias, g.out_c, weight.options()).const_data_ptr<float>(), nullptr,
                         out.data_ptr<float>(), g.out_c, false, tile_stats, stride);
        }
        return out;
      }
      if (kernel == ConvKernel::kStemTiles) {  // float32 only (stem_tiles_apply)
        if constexpr (std::is_same_v<T, float>) {
          stem_conv_tiles(g, xc.const_data_ptr<float>(), pack_stem_tiles_weight(weight).const_data_ptr<float>(),
                          padded_to_vectors(bias, g.out_c, weight.options()).const_data_ptr<float>(), nullptr,
                          out.data_ptr<float>(), false);
        }
        return out;
      }
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        const at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
        grouped_conv_narrow_bf16(g, xc.const_data_ptr<c10::BFloat16>(),
                                 pack_narrow_group_weight_bf16(weight, g).const_data_ptr<c10::BFloat16>(), nullptr,
                                 b.defined() ? b.const_data_ptr<float>() : nullptr, nullptr,
                                 out.data_ptr<c10::BFloat16>(), false);
      }
      if (kernel == ConvKernel::kWideGroup) {  // float32 only (wide_group_applies)
        if constexpr (std::is_same_v<T, float>)
          grouped_conv_wide(g, xc.const_data_ptr<float>(), pack_wide_group_weight(weight, g).const_data_ptr<float>(),
                            padded_to_vectors(bias, g.out_c, weight.options()).const_data_ptr<float>(), nullptr,
                            out.data_ptr<float>(), false);
        return out;
      }
      if constexpr (std::is_same_v<T, float>) {
        const bool narrow = kernel == ConvKernel::kNarrow;
        const at::Tensor b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
        const at::Tensor packed = narrow ? pack_narrow_group_weight(weight, g) : pack_winograd_weight(weight, g);
        (narrow ? grouped_conv_narrow : grouped_conv_winograd)(
            g, xc.const_data_ptr<float>(), packed.const_data_ptr<float>(),
            b.defined() ? b.const_data_ptr<float>() : nullptr, nullptr, out.data_ptr<float>(), false);
      }
      return out;
    };
    const ConvKernel rule = use_wide_group(g, x.scalar_type())            ? ConvKernel::kWideGroup
                            : use_narrow_group_kernel(g, x.scalar_type()) ? ConvKernel::kNarrow
                            : use_winograd_per_call(g, x.scalar_type()) ? ConvKernel::kWinograd
                            : use_stem_tiles(g, x.scalar_type())        ? ConvKernel::kStemTiles
                            : use_gemm_tiles(g, x.scalar_type())        ? ConvKernel::kGemmTiles
                            : use_gemm_kernel(g, x.scalar_type())       ? ConvKernel::kGemm
                                                                         : ConvKernel::kOneDnn;
    const ConvKernel kernel =
        choose_conv_kernel(ConvPass::kTrainForward, x.scalar_type(), g, /*relu=*/false, /*residual=*/false,
                           forward_conv_kernels(ConvPass::kTrainForward, g, x.scalar_type()), rule,
                           [&](ConvKernel k) { conv(k); });
    if (kernel == ConvKernel::kGemmTiles) {  // the moments from the tiles' registers, per band
      chunks = at::get_num_threads();
      stats.assign(chunks * stride, kernels::moment_stats_empty<A>());
      z = conv(kernel, stats.data());
      moments_taken = true;
    } else {
      z = conv(kernel);
    }
  }
  zp = z.data_ptr<T>();
  if (!tiles && !moments_taken) {
    const at::Tensor w_t = gemm ? weight.reshape({g.out_c, g.in_c}).t() : at::Tensor();
    const at::Tensor rows = gemm ? gemm_rows(xc, g) : at::Tensor();
    const at::Tensor z_rows = as_rows(z);
    const int64_t row_block = gemm ? gemm_row_block(pixels, g.in_c, g.out_c, x.element_size())
                                   : std::min(kGemmRowBlock, pass_grain(g.out_c));
    chunks = chunk_count((pixels + row_block - 1) / row_block);
    stats.assign(chunks * stride, kernels::moment_stats_empty<A>());
    for_each_chunk(pixels, chunks, [&](int64_t chunk, int64_t r_begin, int64_t r_end) {
      MomentStats<A>* cs = stats.data() + chunk * stride;
      std::vector<A> mean(g.out_c), m2(g.out_c);
      for (int64_t r0 = r_begin; r0 < r_end; r0 += row_block) {
        const int64_t r1 = std::min(r_end, r0 + row_block), nr = r1 - r0;
        T* block = zp + r0 * g.out_c;
        if (gemm) {  // z's block computed here, so its statistics are taken while it is in cache
          at::Tensor out = z_rows.slice(0, r0, r1);
          at::mm_out(out, rows.slice(0, r0, r1), w_t);
          if (bias.defined())
            for (int64_t r = 0; r < nr; ++r)
              for (int64_t c = 0; c < g.out_c; ++c)
                block[r * g.out_c + c] = store_as<T>(load_acc(block[r * g.out_c + c]) + conv_bias[c]);
        }
        passes::block_moments(block, nr, g.out_c, mean.data(), m2.data());
        for (int64_t c = 0; c < g.out_c; ++c)
          kernels::chan_merge(cs[c], MomentStats<A>{static_cast<A>(nr), mean[c], m2[c]});
      }
    });
  } else if (tiles) {
    const at::Tensor packed = pack_weight<T>(weight, g, nullptr, /*transposed=*/false);
    const A* wp = packed.data_ptr<A>();
    const T* xp = xc.data_ptr<T>();
    const int64_t rows = g.batch * g.out_h;
    chunks = chunk_count(rows);
    stats.assign(chunks * stride, kernels::moment_stats_empty<A>());
    dispatch_block(channel_block(g.out_c_per_group), [&](auto block) {
      constexpr int COB = decltype(block)::value;
      for_each_chunk(rows, chunks, [&](int64_t chunk, int64_t row0, int64_t row1) {
        MomentStats<A>* cs = stats.data() + chunk * stride;
        conv_rows<COB>(g, xp, wp, row0, row1,
                       [&](int64_t n, int64_t ho, int64_t wo0, int npix, int64_t co,
                           const auto& acc) {
                         A biased[tile_pixels<A, COB>][COB];
                         for (int p = 0; p < npix; ++p) {
                           const int64_t at = kernels::nhwc_index(n, ho, wo0 + p, co, g.out_h, g.out_w, g.out_c);
                           for (int c = 0; c < COB; ++c) {
                             biased[p][c] = acc[p][c] + conv_bias[co + c];
                             zp[at + c] = store_as<T>(biased[p][c]);
                           }
                         }
                         for (int c = 0; c < COB; ++c)
                           kernels::chan_merge(cs[co + c], kernels::tile_moments(&biased[0][c], npix, COB));
                       });
      });
    });
  }

  // Chunks merge in order, so the statistics do not depend on thread scheduling.
  const auto acc_dtype = c10::CppTypeToScalarType<A>::value;
  at::Tensor mean = at::empty({g.out_c}, x.options().dtype(acc_dtype));
  at::Tensor var = at::empty({g.out_c}, x.options().dtype(acc_dtype));
  const auto gamma = acc_vector<T>(bn_weight, g.out_c), beta = acc_vector<T>(bn_bias, g.out_c);
  std::vector<A> scale(g.out_c), shift(g.out_c);
  for (int64_t c = 0; c < g.out_c; ++c) {
    MomentStats<A> total = stats[c];
    for (int64_t chunk = 1; chunk < chunks; ++chunk) kernels::chan_merge(total, stats[chunk * stride + c]);
    const A v = kernels::biased_variance(total);
    mean.data_ptr<A>()[c] = total.mean;
    var.data_ptr<A>()[c] = v;
    const ChannelAffine<A> a =
        kernels::bn_affine(gamma[c], beta[c], total.mean, kernels::inv_std(v, static_cast<A>(eps)));
    scale[c] = a.scale;
    shift[c] = a.shift;
  }

  // Pass 2: normalise, add the residual, activate.
  const at::Tensor res = residual.defined() ? to_nhwc(residual) : at::Tensor();
  const T* rp = res.defined() ? res.data_ptr<T>() : nullptr;
  at::Tensor y = empty_nhwc(x, g.batch, g.out_c, g.out_h, g.out_w);
  T* yp = y.data_ptr<T>();
  at::parallel_for(0, pixels, pass_grain(g.out_c), [&](int64_t p0, int64_t p1) {
    passes::normalize_rows(yp + p0 * g.out_c, zp + p0 * g.out_c, rp ? rp + p0 * g.out_c : nullptr,
                           scale.data(), shift.data(), p1 - p0, g.out_c, relu);
  });
  return {in_memory_format(y, output_memory_format(x)), z, mean, var};
}

at::Tensor conv_bn_act_eval_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, const at::Tensor& bn_weight,
                                const at::Tensor& bn_bias, const at::Tensor& running_mean,
                                const at::Tensor& running_var,
                                const std::optional<at::Tensor>& residual, int64_t stride,
                                int64_t padding, int64_t groups, double eps, bool relu) {
  const at::Tensor b = bias.value_or(at::Tensor()), r = residual.value_or(at::Tensor());
  const ConvGeometry g =
      checks::check_conv_bn_act(kOp, x, weight, b, bn_weight, bn_bias, r, stride, padding, groups);
  checks::check_eps(kOp, eps);
  checks::check_like(kOp, x, "x", running_mean, "running_mean");
  checks::check_vector(kOp, running_mean, g.out_c, "running_mean");
  checks::check_like(kOp, x, "x", running_var, "running_var");
  checks::check_vector(kOp, running_var, g.out_c, "running_var");
  at::Tensor y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "conv_bn_act_eval", [&] {
    y = eval_forward<scalar_t>(x, weight, b, bn_weight, bn_bias, running_mean, running_var, r, g, eps, relu);
  });
  return y;
}

at::Tensor conv_bn_act_eval_uncached_cpu(const at::Tensor& x, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, const at::Tensor& bn_weight,
                                         const at::Tensor& bn_bias, const at::Tensor& running_mean,
                                         const at::Tensor& running_var, const std::optional<at::Tensor>& residual,
                                         int64_t stride, int64_t padding, int64_t groups, double eps, bool relu) {
  const FoldedWeightCacheOff off;
  return conv_bn_act_eval_cpu(x, weight, bias, bn_weight, bn_bias, running_mean, running_var, residual, stride,
                              padding, groups, eps, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv_bn_act_train_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& bn_weight, const at::Tensor& bn_bias, const std::optional<at::Tensor>& residual,
    int64_t stride, int64_t padding, int64_t groups, double eps, bool relu) {
  const at::Tensor b = bias.value_or(at::Tensor()), r = residual.value_or(at::Tensor());
  const ConvGeometry g =
      checks::check_conv_bn_act(kOp, x, weight, b, bn_weight, bn_bias, r, stride, padding, groups);
  checks::check_eps(kOp, eps);
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "conv_bn_act_train", [&] {
    out = train_forward<scalar_t>(x, weight, b, bn_weight, bn_bias, r, g, eps, relu);
  });
  return out;
}

}  // namespace
}  // namespace regnet_ext::cpu

TORCH_LIBRARY_IMPL(regnet_ext, CPU, m) {
  m.impl("conv_bn_act_eval", &regnet_ext::cpu::conv_bn_act_eval_cpu);
  m.impl("conv_bn_act_eval.uncached", &regnet_ext::cpu::conv_bn_act_eval_uncached_cpu);
  m.impl("conv_bn_act_train", &regnet_ext::cpu::conv_bn_act_train_cpu);
}
