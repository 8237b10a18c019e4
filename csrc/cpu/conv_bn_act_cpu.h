// CPU-side plumbing shared by conv_bn_act's forward and backward: layout conversion, weight
// packing, work splitting, and the dispatch from runtime channel counts to register-tile sizes.
// All arithmetic comes from csrc/kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "cpu/chunk_stride.h"
#include "cpu/conv_autotune.h"
#include "cpu/gemm_1x1_tiles.h"
#include "cpu/grouped_conv_narrow.h"
#include "cpu/grouped_conv_wide.h"
#include "cpu/grouped_conv_narrow_dx.h"
#include "cpu/grouped_conv_narrow_bf16.h"
#include "cpu/grouped_conv_winograd.h"
#include "cpu/stem_conv_tiles.h"
#include "kernels/bn_stats.h"
#include "kernels/conv_bn_act.h"
#include "kernels/conv_bn_act_backward.h"

namespace regnet_ext::cpu {

using kernels::acc_t;
using kernels::ConvGeometry;

// The output keeps x's memory format: channels_last when x is (and is not also plain
// contiguous, as for 1x1 images); regnet_ext/ops/conv_bn_act.py's fake kernel uses the same rule.
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast))
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// Whether t has exactly the strides at::empty(t.sizes(), format) gives (TensorImpl's
// empty_tensor_restride rules), worked out here: a meta tensor made to compare with took 0.7% of
// the main thread in RegNetX-400MF's fused inference forward (an allocation through the dispatcher
// per call).
inline bool has_fresh_strides(const at::Tensor& t, at::MemoryFormat format) {
  const at::IntArrayRef sizes = t.sizes(), strides = t.strides();
  if (format == at::MemoryFormat::ChannelsLast && sizes.size() == 4)
    return strides == at::IntArrayRef(c10::get_channels_last_strides_2d(sizes));
  if (format == at::MemoryFormat::Contiguous) {
    int64_t expected = 1;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      if (strides[d] != expected) return false;
      expected *= std::max<int64_t>(sizes[d], 1);
    }
    return true;
  }
  const at::Tensor fresh = at::empty(sizes, t.options().device(at::kMeta).memory_format(format));
  return fresh.strides() == strides;
}

// t with exactly the strides of a fresh tensor in `format` (what the fake kernels promise),
// copying only when they differ: .contiguous() keeps odd strides of size-1 dimensions.
inline at::Tensor in_memory_format(const at::Tensor& t, at::MemoryFormat format) {
  if (has_fresh_strides(t, format)) return t;
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(format));
  out.copy_(t);
  return out;
}

// Dense NHWC data (a no-op for channels_last inputs).
inline at::Tensor to_nhwc(const at::Tensor& t) {
  return t.contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor empty_nhwc(const at::Tensor& like, int64_t n, int64_t c, int64_t h, int64_t w) {
  return at::empty({n, c, h, w}, like.options().memory_format(at::MemoryFormat::ChannelsLast));
}

// 1x1, ungrouped, unpadded convs are GEMMs: [N*H_out*W_out, C_in] x [C_in, C_out] (strided
// ones on a gathered copy of every stride-th pixel).
inline bool is_plain_gemm(const ConvGeometry& g) {
  return g.kernel == 1 && g.groups == 1 && g.padding == 0;
}

inline bool use_own_conv_tiles(const ConvGeometry&) {
  return conv_backend() == ConvBackend::kTiles;
}

// The fixed rules below choose between our kernels and oneDNN for the eval and training
// forward where the autotuner (conv_autotune.h) is off, and always for the backward.
//
// Grouped convs with 8 or 16 channels per group, float32: our kernel (grouped_conv_narrow.h,
// AVX-512 or AVX2) instead of oneDNN, in the measured mix only (aten and tiles keep their
// meaning). The AVX2 variant's first 3x3 tiles (the autotuner's timings on a 2-core AMD EPYC VM
// without AVX-512, eval, 2026-12-04) fitted the same rules: 1.04-2.36x oneDNN at batch 1,
// 1.02-1.66x at batch 8 from 104 channels on with 8 per group, 0.82x at 48 channels over 112px;
// 16 per group at batch 8 0.95-1.44x; its current tiles have their own rule (below). AVX-512,
// measured against oneDNN (eval, 3x3, 2 threads, one-off runs): 8 per group is faster at batch 1
// (1.17-2.1x) and at batch 8 with 104 or more channels (1.04x at 104 channels 56px stride 2 up to
// 1.58x at 440 channels 7px), not at batch 8 with few channels over large images
// (24 channels at 112px: 0.73x, 48 at 56px: 0.91x), where few groups share the work and the
// input streams from memory. 16 per group is faster at batch 1 only (1.20-2.38x; batch 8 with
// 160-384 channels: 0.80-0.97x). bfloat16 (grouped_conv_narrow_bf16.h; against oneDNN's bfloat16
// conv, times from the autotuner, one run, 2026-12-03): 8 per group at batch 1 from 48 channels
// on 1.02-2.47x in eval and 1.06-1.31x in the training forward; at batch 8 0.74-1.35x; 16 per
// group 0.61-1.90x, slower in the training forward (which packs the weight per call) at 384
// channels. The rule keeps 8 per group at batch 1; the autotuner may take the others.
inline bool narrow_group_kernel_for(at::ScalarType dtype) {
  return (dtype == at::kFloat && kHaveNarrowGroupKernel) || (dtype == at::kBFloat16 && kHaveNarrowGroupBf16Kernel);
}

inline bool use_narrow_group_kernel(const ConvGeometry& g, at::ScalarType dtype) {
  const ConvBackend backend = conv_backend();
  if (!narrow_group_kernel_for(dtype) || (backend != ConvBackend::kMixed && backend != ConvBackend::kOwn) ||
      g.groups == 1 || g.in_c_per_group != g.out_c_per_group)
    return false;
  if (backend == ConvBackend::kOwn) return g.in_c_per_group == 8 || g.in_c_per_group == 16;
  if (dtype == at::kBFloat16) return g.in_c_per_group == 8 && g.batch == 1 && g.in_c >= 48;
#if !defined(__AVX512F__)
  // AVX2's 3x3 tiles (column walk, prefetch) against oneDNN, batch 8, eval and training forward
  // interleaved (2-core AVX2 VM, 2026-12-04): 8 per group 1.07-1.67x on every shape tried (24 to
  // 208 channels, 7-112px, both strides); 16 per group 1.24-1.39x where the output is 7px (384
  // and 672 channels), 0.86-1.13x on larger outputs (32 to 288 channels).
  if (g.kernel == 3)
    return g.in_c_per_group == 8 || (g.in_c_per_group == 16 && (g.batch == 1 || g.out_h * g.out_w <= 64));
#endif
  if (g.in_c_per_group == 8) return g.batch == 1 || g.in_c >= 96;
  return g.in_c_per_group == 16 && g.batch == 1;
}

// Whether this build's Winograd kernel can compute the conv (float32, AVX-512, winograd_applies);
// the rules and candidates below add the widths it is used at.
inline bool winograd_can_run(const ConvGeometry& g, at::ScalarType dtype) {
  return kHaveWinogradKernel && dtype == at::kFloat && winograd_applies(g);
}

// Grouped 3x3 stride-1 convs with 32 or more channels per group (32-64 and 120-128, see
// winograd_applies), float32: Winograd F(2x2, 3x3) (grouped_conv_winograd.h) instead of oneDNN,
// in the measured mix only. Measured against oneDNN's conv with the same fused epilogue (eval,
// 2 threads, 2026-11-22): 64 per group 1.37-1.68x at batch 8 over 56, 28 and 14px (three runs),
// 1.21-1.33x at 7px (49 outputs in 64 tile slots), 1.52-1.79x at batch 1 and 56px, 1.06-1.26x
// at batch 1 and 7px; one run each: 24 per group 1.09-1.29x, 40 1.44-1.46x, 48 1.35-1.41x, 56
// 1.23-1.71x, 120 and 128 1.50-1.66x. 24 per group, 1.09-1.29x alone, made whole fused
// RegNetX/Y-1.6GF forwards 3-6% slower, and 16 per group was 0.82-1.0x at batch 8 (the
// transforms cost as much as the shallow GEMMs save, with that day's kernel): by these rules
// those keep oneDNN or the narrow kernel (the autotuner times Winograd at 16 per group too:
// winograd_16_per_group_candidate).
inline bool use_winograd_kernel(const ConvGeometry& g, at::ScalarType dtype) {
  const ConvBackend backend = conv_backend();
  return (backend == ConvBackend::kMixed || backend == ConvBackend::kOwn) && winograd_can_run(g, dtype) &&
         g.in_c_per_group >= 32;
}

// The training forward and every input gradient transform the weight on each call
// (pack_winograd_weight: 0.04 ms for 128 channels
// in groups of 64, 0.6 ms for 1088), which pays where the conv has enough pixels per weight: at
// 392 output pixels (1088 channels, 7px, batch 8) the transform cost more than the 0.25 ms the
// conv saved; 1568 pixels and more (14px at batch 8, 56px at batch 1) came out ahead.
inline bool use_winograd_per_call(const ConvGeometry& g, at::ScalarType dtype) {
  return use_winograd_kernel(g, dtype) &&
         (conv_backend() == ConvBackend::kOwn || g.batch * g.out_h * g.out_w >= 1024);
}

// 1x1 ungrouped convs (float32, bfloat16): one GEMM over all N*H*W rows through ATen (at::mm,
// the folded weight transposed once per change) and our epilogue pass, in place of oneDNN's conv.
// The autotuner's timings over every 1x1 eval shape of RegNetX/Y-400MF and RegNetY-4.0GF (kernel
// benchmark, 2 threads, 2026-12-04): the GEMM was faster on 17 of 92, by up to 1.44x, 16 of them
// with at most 2^25 multiply-adds (batch 1 from 32 channels at 56px to 208 at 14px, where
// oneDNN's conv has ~25 us more fixed cost per call; the 17th by 1.04x), and up to 4.6x slower on
// larger ones (32 -> 48 channels at 112px: 1122 vs 303 us). So it is a candidate for the
// autotuner up to that size only (which also keeps the tuning short), and the rule under
// REGNET_EXT_CPU_CONV=own (which makes the tests run it).
inline bool gemm_kernel_applies(const ConvGeometry& g, at::ScalarType dtype) {
  const int64_t macs = g.batch * g.out_h * g.out_w * g.in_c * g.out_c;
  return is_plain_gemm(g) && (dtype == at::kFloat || dtype == at::kBFloat16) && macs <= (int64_t(1) << 25);
}

inline bool use_gemm_kernel(const ConvGeometry& g, at::ScalarType dtype) {
  return conv_backend() == ConvBackend::kOwn && gemm_kernel_applies(g, dtype);
}

// 1x1 ungrouped convs, float32, AVX-512: our GEMM tiles (gemm_1x1_tiles.h) for the eval forward
// (epilogue in registers) and the training forward's z, and for both gradients of the backward
// (the input gradient through the same tiles, the weight gradient through
// gemm_1x1_weight_grad.h), timed by the autotuner against oneDNN (and the whole-tensor GEMM where
// that applies); the rule only under REGNET_EXT_CPU_CONV=gemm_tiles (tests). In training, per
// call against oneDNN (interleaved medians, batch 8, the BN passes included, 2-core Zen 4 VM,
// 2026-12-05): the weight gradient 1.10-1.36x on RegNetX/Y-400MF's 1x1 shapes but 208 at 14px
// (0.98x), the input gradient 1.04-1.21x, the forward (moments from the tiles) 1.03-1.21x; whole
// training steps, one process alternating with and without these candidates: RegNetX-400MF
// 1.010x and 1.028x at 8 x 224, 1.074x at 32 x 128; RegNetY-400MF 1.044x and 1.059x. At stride 2
// (the projection shortcuts) an earlier try measured 0.41-0.99x oneDNN's backward at batch 8;
// with the input gradient scattered by one pass of ours (scatter_strided_rows) the autotuner's
// medians against oneDNN's backward (2-core Zen 4 VM, 2026-12-06) were 568 vs 921 us (192 -> 512
// channels at 28px, batch 1), 99 vs 254 (64 -> 160, 28px, batch 1), 4807 vs 6262 (512 -> 1088,
// 14px, batch 8), 4948 vs 5594 (32 -> 128, 112px, batch 8).
inline bool gemm_tiles_apply(const ConvGeometry& g, at::ScalarType dtype) {
  return kHaveGemmTiles && is_plain_gemm(g) && dtype == at::kFloat;
}

inline bool use_gemm_tiles(const ConvGeometry& g, at::ScalarType dtype) {
  return gemm_tiles_forced() && gemm_tiles_apply(g, dtype);
}

// The training forward packs (transposes) the weight on every call, which costs about as much as
// 50-100 rows of the GEMM: below 256 output pixels the tiles are no candidate there. (1088 -> 1088
// channels at 7px, batch 1, 49 rows: the autotuner took the tiles at 1.08 ms against oneDNN's
// 1.13, and the kernel benchmark's training row then ran at 0.75-0.92x eager, 1.04-1.06x before.)
inline bool gemm_tiles_train_forward_pays(const ConvGeometry& g) { return g.batch * g.out_h * g.out_w >= 256; }

// Dense KxK convs with at most kStemMaxInChannels inputs (the stem), float32, AVX-512: our tiles
// (stem_conv_tiles.h), in eval and in the training forward; the rule wherever our kernels may
// run, and a candidate for the autotuner.
inline bool stem_tiles_apply(const ConvGeometry& g, at::ScalarType dtype) {
  return kHaveGemmTiles && dtype == at::kFloat && g.groups == 1 && g.kernel > 1 && g.in_c <= kStemMaxInChannels;
}

// Grouped convs with a multiple of 16 channels per group, 32 and more, float32, AVX-512: our
// wide-group tiles (grouped_conv_wide.h) for the forward in eval and training, a candidate for
// the autotuner, and the rule under REGNET_EXT_CPU_CONV=wide_group (which makes the tests run
// them). (Their weight gradient, grouped_conv_wide_weight_grad.h, is our weight gradient for these
// shapes: use_own_weight_grad.)
inline bool wide_group_applies(const ConvGeometry& g, at::ScalarType dtype) {
  return kHaveGemmTiles && dtype == at::kFloat && wide_group_shape(g);
}

inline bool use_wide_group(const ConvGeometry& g, at::ScalarType dtype) {
  return wide_group_forced() && wide_group_applies(g, dtype);
}

inline bool use_stem_tiles(const ConvGeometry& g, at::ScalarType dtype) {
  const ConvBackend backend = conv_backend();
  return (backend == ConvBackend::kMixed || backend == ConvBackend::kOwn) && stem_tiles_apply(g, dtype);
}

// The kernel of ours that can run this conv's forward in place of oneDNN, for the autotuner
// (which runs in the measured mix only, conv_autotune_enabled): the narrow-group kernel for 8 or 16 channels per group (float32, or bfloat16 on CPUs
// with AVX512-BF16), Winograd for 32 and more at stride 1 (float32; at 16 per group a third
// candidate, winograd_16_per_group_candidate). Autotuning
// (conv_autotune.h) times it against oneDNN; the rules above decide without timing. (Winograd
// at 24 per group is left out: faster alone, it made whole RegNetX/Y-1.6GF forwards slower,
// which timing one layer would not see.)
inline std::optional<ConvKernel> own_conv_kernel(const ConvGeometry& g, at::ScalarType dtype) {
  if (gemm_kernel_applies(g, dtype)) return ConvKernel::kGemm;
  if (g.groups == 1 || g.in_c_per_group != g.out_c_per_group) return std::nullopt;
  if (narrow_group_kernel_for(dtype) && (g.in_c_per_group == 8 || g.in_c_per_group == 16)) return ConvKernel::kNarrow;
  if (winograd_can_run(g, dtype) && g.in_c_per_group >= 32) return ConvKernel::kWinograd;
  return std::nullopt;
}

// 16 per group at stride 1 (RegNetX-400MF's 64-384 channels): Winograd as a third eval
// candidate beside oneDNN and the narrow kernel. There oneDNN's direct conv runs at 194-215
// GFLOP/s at batch 8, about 90% of the FMA peak of the 2-core Zen 4 VM (AVX-512) measured on
// 2026-12-07, so only fewer multiplies can be faster: Winograd alone against oneDNN's conv
// (standalone, interleaved, 2 threads, two runs) at batch 8 1.20-1.29x at 28px, 1.33-1.41x at
// 14px and 1.13-1.28x at 7px; at batch 1 1.94-1.96x at 28px and 2.42-2.76x at 14px. Also a
// candidate for the training forward and (backward_conv_plans) the input gradient, whose weight
// transform per call is small here (16 x 16 x 16 floats a group): training steps of the op where
// the autotuner took it 1.02-1.12x faster than with it left out (two runs; interleaved), whole
// fused RegNetX-400MF training steps 0.99-1.01x.
inline bool winograd_16_per_group_candidate(const ConvGeometry& g, at::ScalarType dtype) {
  return winograd_can_run(g, dtype) && g.in_c_per_group == 16;
}

// What the autotuner compares for a forward pass: oneDNN and our kernel(s), or nothing.
inline std::vector<ConvKernel> forward_conv_kernels(ConvPass pass, const ConvGeometry& g, at::ScalarType dtype) {
  std::vector<ConvKernel> kernels{ConvKernel::kOneDnn};
  if (const std::optional<ConvKernel> own = own_conv_kernel(g, dtype)) kernels.push_back(*own);
  if ((pass == ConvPass::kEval || pass == ConvPass::kTrainForward) && winograd_16_per_group_candidate(g, dtype))
    kernels.push_back(ConvKernel::kWinograd);
  if ((pass == ConvPass::kEval || (pass == ConvPass::kTrainForward && gemm_tiles_train_forward_pays(g))) &&
      gemm_tiles_apply(g, dtype))
    kernels.push_back(ConvKernel::kGemmTiles);
  if ((pass == ConvPass::kEval || pass == ConvPass::kTrainForward) && stem_tiles_apply(g, dtype))
    kernels.push_back(ConvKernel::kStemTiles);
  if ((pass == ConvPass::kEval || pass == ConvPass::kTrainForward) && wide_group_applies(g, dtype))
    kernels.push_back(ConvKernel::kWideGroup);
  if (kernels.size() < 2) return {};
  return kernels;
}

// The weight gradient of a grouped KxK conv over a large activation comes from our tiles, the
// input gradient still from oneDNN. Measured by benchmarks/bench_weight_grad.py (the whole
// training backward; results/weight_grad_cpu.*, batch 8 unless said): oneDNN's channels_last
// kernel is slow on large activations (48 channels in groups of 8 at 112px: 9.6 ms for the
// backward in one oneDNN call, 6.8 ms with our weight gradient; 128 in groups of 64: 67 vs
// 35 ms), while on small ones one oneDNN call for both gradients beats two calls however fast
// our part is (440 in groups of 8 at 7px, a run with the split there: 0.40 vs 0.58 ms). At
// batch 1 the split pays from 56px on, except for wide groups at stride 1 (128 in groups of 64
// at 56px, earlier run: 2.6 vs 2.9 ms). oneDNN's times varied up to 2-3x between runs on this
// VM: rerun the benchmark before retuning. All of this is float32: in bfloat16 our tiles convert
// element by element and oneDNN's bfloat16 kernels won (128 channels in groups of 64, batch 8,
// 56px: a 48 ms backward with our weight gradient, 24 ms with oneDNN's, 2026-12-03), so 16-bit
// types keep oneDNN's. So do groups of 16k channels in builds without AVX-512: the tiles' lanes
// are then 16 output channels, one 512-bit register, which the compiler splits without it; on a
// VM without AVX-512 (2026-12-04) the autotuner timed the backward with our weight gradient at
// 1.7-3.2x oneDNN's time on every grouped shape of RegNetX-400MF (16 per group) at batch 8. At 8
// per group (8-channel lanes, one 256-bit register) the same rule holds there: RegNetY-400MF at
// batch 8, 48 channels at 112px 6.8 vs 10.2 ms, 104 at 56px 3.9 vs 4.7 ms; from 104 at 28px on
// oneDNN was faster (1.05-1.28x). Wide groups (a multiple of 16 channels per group from 32 on,
// float32, AVX-512) have their own tiles (grouped_conv_wide_weight_grad.h), which the autotuner
// took over oneDNN's weight gradient on all 16 of RegNetY-4.0GF's grouped shapes at batch 1 and 8
// (backward with oneDNN's input gradient, or Winograd's, against oneDNN's both: 0.59-0.94x the
// time; 2-core Ice Lake VM, 2026-12-06): the rule takes them at every size.
inline bool use_own_weight_grad(const ConvGeometry& g, at::ScalarType dtype) {
  switch (conv_backend()) {
    case ConvBackend::kTiles: return true;
    case ConvBackend::kAten: return false;
    case ConvBackend::kOwn: return g.groups > 1;
    case ConvBackend::kMixed: break;
  }
#if !defined(__AVX512F__)
  if (g.out_c_per_group % 16 == 0) return false;
#endif
  if (dtype == at::kBFloat16 || dtype == at::kHalf) return false;
  if (wide_group_applies(g, dtype)) return true;  // grouped_conv_wide_weight_grad.h: see there
  const int64_t pixels = g.in_h * g.in_w;
  const bool narrow_or_strided = g.in_c_per_group <= 16 || g.stride > 1;
  return g.groups > 1 && (g.batch * pixels >= 8 * 56 * 56 ||
                          (g.batch == 1 && pixels >= 56 * 56 && narrow_or_strided));
}

// The backward of a stride-1 1x1 conv (float32) as two ATen GEMMs over the NHWC rows (views,
// no copies): grad_x = dz W, grad_W = dz^T x. Against oneDNN's conv backward (both gradients,
// 2 threads, AVX2 VM, 2026-12-04, interleaved medians): 1.69x at 440 channels 7px batch 8, 1.16x
// at 208 14px, 1.49-1.59x at batch 1 (7 and 14px); 0.92x at 104 28px and 0.64-0.86x over more
// rows (48->104 at 56px, 32->48 at 112px). So the rule takes it up to 2048 rows (N*H*W), the
// autotuner times it wherever it applies.
inline bool gemm_backward_applies(const ConvGeometry& g, at::ScalarType dtype) {
  return is_plain_gemm(g) && g.stride == 1 && dtype == at::kFloat;
}

inline bool use_gemm_backward(const ConvGeometry& g, at::ScalarType dtype) {
  switch (conv_backend()) {
    case ConvBackend::kOwn: return gemm_backward_applies(g, dtype);
    case ConvBackend::kMixed: return gemm_backward_applies(g, dtype) && g.batch * g.out_h * g.out_w <= 2048;
    default: return false;  // tiles: our GEMMs anyway; aten: oneDNN
  }
}

// The input gradient of a stride-1 grouped conv with 8 or 16 channels per group (float32) from
// the narrow-group forward kernel: it is the conv of dz with each group's weight transposed and
// flipped, padding k-1-p, which is the forward's own geometry when p = k/2. Against oneDNN's
// backward (both gradients in one call) the split -- our input gradient, oneDNN's weight
// gradient alone -- measured (AVX2 VM, 2 threads, 2026-12-04, medians of 9 interleaved rounds):
// 8 per group at batch 8 1.48x (104 channels, 28px), 1.11x (208, 14px), 1.19x (440, 7px); at
// batch 1 1.05x, 1.01x and 0.86x (49 pixels: two calls cost more than one); 16 per group
// 0.88-1.00x. Stride 2 (3x3, 8 per group) has its own kernel (grouped_conv_narrow_dx.h): the
// eval backward's input gradient alone against oneDNN's (interleaved, 9 rounds, 2026-12-04) at
// batch 8 1.22x (48 channels, 112px), 1.41x (104, 56px), 1.11x (208, 28px), 1.40x (440, 14px),
// at batch 1 1.17-1.82x; the autotuner's timings inside a RegNetY-400MF training step (with the
// better of the two weight gradients each side): batch 8 1.08-1.18x, batch 1 0.98-1.17x. The
// rule takes 8 per group at stride 2, and at stride 1 from 392 output pixels on; the autotuner
// times it wherever it applies.
inline bool narrow_input_grad_applies(const ConvGeometry& g, at::ScalarType dtype) {
  if (dtype != at::kFloat || g.groups == 1 || g.in_c_per_group != g.out_c_per_group) return false;
  if (g.stride == 2)  // grouped_conv_narrow_dx.h
    return kHaveNarrowStride2InputGrad && g.kernel == 3 && g.padding == 1 && g.in_c_per_group == 8;
  return g.stride == 1 && 2 * g.padding == g.kernel - 1 && own_conv_kernel(g, dtype) == ConvKernel::kNarrow;
}

inline bool use_narrow_input_grad(const ConvGeometry& g, at::ScalarType dtype) {
  switch (conv_backend()) {
    case ConvBackend::kOwn: return narrow_input_grad_applies(g, dtype);
    case ConvBackend::kMixed:
      return narrow_input_grad_applies(g, dtype) && g.in_c_per_group == 8 &&
             (g.stride == 2 || g.batch * g.out_h * g.out_w >= 392);
    default: return false;  // tiles: our generic tiles; aten: oneDNN
  }
}

// The backward plans the autotuner compares in the measured mix: for a stride-1 1x1 conv,
// oneDNN or the two GEMMs (ATen's or our tiles); for a strided one oneDNN or our tiles; for a
// float32 grouped conv, oneDNN for both gradients, our tiles for the weight gradient (any
// grouped conv), Winograd or the narrow-group kernel for the input gradient where they run the
// forward (the narrow one at stride 1; Winograd also at 16 per group), or both of ours.
inline std::vector<ConvKernel> backward_conv_plans(const ConvGeometry& g, at::ScalarType dtype, bool input_grad,
                                                   bool param_grads) {
  if (gemm_backward_applies(g, dtype)) {
    std::vector<ConvKernel> plans{ConvKernel::kOneDnn, ConvKernel::kGemm};
    if (gemm_tiles_apply(g, dtype)) plans.push_back(ConvKernel::kGemmTiles);
    return plans;
  }
  if (gemm_tiles_apply(g, dtype)) return {ConvKernel::kOneDnn, ConvKernel::kGemmTiles};
  if (dtype != at::kFloat || g.groups == 1) return {};
  const bool winograd = input_grad && (own_conv_kernel(g, dtype) == ConvKernel::kWinograd ||
                                       winograd_16_per_group_candidate(g, dtype));
  const bool narrow = input_grad && narrow_input_grad_applies(g, dtype);
  std::vector<ConvKernel> plans{ConvKernel::kOneDnn};
  if (param_grads) plans.push_back(ConvKernel::kOwnWeightGrad);
  if (winograd) plans.push_back(ConvKernel::kWinogradDx);
  if (winograd && param_grads) plans.push_back(ConvKernel::kWinogradDxOwnWeightGrad);
  if (narrow) plans.push_back(ConvKernel::kNarrowDx);
  if (narrow && param_grads) plans.push_back(ConvKernel::kNarrowDxOwnWeightGrad);
  return plans;
}

// 1x1 convs with REGNET_EXT_CPU_CONV=tiles: a blocked GEMM (at::mm per row block, epilogue or
// statistics on cache-hot rows). Inside a whole RegNetY-400MF forward (batch 8, 224px, 2
// threads) it made the fused model 2x slower than stock (one small GEMM per block and thread),
// so only "tiles" (our own code everywhere) keeps it, so that the tests exercise it on every
// shape; elsewhere oneDNN's conv or the whole-tensor GEMM above (kGemm).
inline bool use_blocked_gemm(const ConvGeometry& g) {
  return is_plain_gemm(g) && use_own_conv_tiles(g);
}

// The KxK conv through ATen (oneDNN), NHWC in and out.
inline at::Tensor aten_conv(const at::Tensor& x_nhwc, const at::Tensor& weight,
                            const at::Tensor& bias, const ConvGeometry& g) {
  // The weight goes as it is: a channels_last input alone makes oneDNN run channels_last, and
  // oneDNN reorders any weight layout into its own (a channels_last copy of an NCHW weight
  // first cost a 2.5 MB copy per call for 1088 channels in groups of 64).
  return to_nhwc(at::convolution(x_nhwc, weight, bias,
                                 {g.stride, g.stride}, {g.padding, g.padding}, {1, 1}, false,
                                 {0, 0}, g.groups));
}

// The GEMM's [M, C_in] operand: x itself, or its every stride-th pixel.
inline at::Tensor gemm_rows(const at::Tensor& x_nhwc, const ConvGeometry& g) {
  at::Tensor v = x_nhwc;
  if (g.stride > 1) v = v.slice(2, 0, g.in_h, g.stride).slice(3, 0, g.in_w, g.stride);
  // Channels-last [N, C, H, W] is [N, H, W, C] in memory.
  return v.permute({0, 2, 3, 1}).contiguous().view({-1, g.in_c});
}

// Weight [C_out, C_in/g, K, K] -> packed accumulation-type buffer, each output channel's
// weights multiplied by scale[co] when scale is given (the eval-mode BN fold).
template <typename T>
at::Tensor pack_weight(const at::Tensor& weight, const ConvGeometry& g, const acc_t<T>* scale,
                       bool transposed) {
  using A = acc_t<T>;
  const T* src = weight.const_data_ptr<T>();  // read through its strides: no contiguous copy
  const auto st = weight.strides();
  at::Tensor packed = at::empty({weight.numel()}, weight.options().dtype(c10::CppTypeToScalarType<A>::value));
  A* dst = packed.data_ptr<A>();
  for (int64_t co = 0; co < g.out_c; ++co) {
    const A s = scale ? scale[co] : A(1);
    for (int64_t ci = 0; ci < g.in_c_per_group; ++ci)
      for (int64_t kh = 0; kh < g.kernel; ++kh)
        for (int64_t kw = 0; kw < g.kernel; ++kw) {
          const int64_t at = transposed ? kernels::conv_pack_transposed_index(g, co, ci, kh, kw)
                                        : kernels::conv_pack_index(g, co, ci, kh, kw);
          dst[at] = static_cast<A>(src[co * st[0] + ci * st[1] + kh * st[2] + kw * st[3]]) * s;
        }
  }
  return packed;
}

// Rows per task of a per-channel pass over a [rows, channels] activation: about 16k values, so
// that a batch-1 layer of a late stage (49 or 196 pixels) still keeps both threads busy, where a
// fixed 256 rows left it to one.
inline int64_t pass_grain(int64_t channels) {
  return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(channels, 1));
}

// Work is split into a fixed number of contiguous chunks (not per-thread state) so that
// per-chunk partial sums merge in the same order on every run.
inline int64_t chunk_count(int64_t items) {
  return std::max<int64_t>(1, std::min<int64_t>(items, at::get_num_threads()));
}

template <typename F>
void for_each_chunk(int64_t items, int64_t chunks, const F& body) {
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) body(c, items * c / chunks, items * (c + 1) / chunks);
  });
}

// partial holds `chunks` rows of `size` sums, `stride` apart: their sum in chunk order (the same
// on every run), in the first `size` elements, the rest dropped.
template <typename A>
void merge_chunk_sums(std::vector<A>& partial, int64_t chunks, int64_t stride, int64_t size) {
  for (int64_t chunk = 1; chunk < chunks; ++chunk)
    for (int64_t i = 0; i < size; ++i) partial[i] += partial[chunk * stride + i];
  partial.resize(size);
}

// Largest register-tile width in {16, 8, 4, 2, 1} that divides a group's channel count.
inline int channel_block(int64_t channels_per_group) {
  for (int b : {16, 8, 4, 2}) if (channels_per_group % b == 0) return b;
  return 1;
}

// Calls f(std::integral_constant<int, B>{}) with B = block.
template <typename F>
void dispatch_block(int block, const F& f) {
  switch (block) {
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{}); break;
  }
}

// The CPU's lane type for a block of N channels: a compiler vector of N accumulation values
// (one SIMD register or a few), or the plain scalar for N = 1.
template <typename A, int N>
struct LaneOf {
  typedef A type __attribute__((vector_size(N * sizeof(A))));
};
template <typename A>
struct LaneOf<A, 1> {
  using type = A;
};
template <typename A, int N>
using lane_t = typename LaneOf<A, N>::type;

// Pixels per register tile: enough independent accumulators to hide FMA latency and amortise
// the per-tap pointer set-up, while the tile (PW lanes of up to one 512-bit register each)
// still fits in the 32 vector registers.
template <typename A, int LANE>
constexpr int tile_pixels = (LANE * sizeof(A) > 64) ? 8 : 16;

// Runs the conv over output rows [row0, row1) (row = n * out_h + ho), handing every register
// tile to epilogue(n, ho, wo0, npix, co_global, values[PW][COB]). Weights must be packed by pack_weight.
template <int COB, typename T, typename Epilogue>
void conv_rows(const ConvGeometry& g, const T* x, const acc_t<T>* packed, int64_t row0,
               int64_t row1, const Epilogue& epilogue) {
  using A = acc_t<T>;
  std::vector<T> zeros(g.in_c_per_group, T(0));
  using V = lane_t<A, COB>;
  constexpr int PW = tile_pixels<A, COB>;
  V acc[PW];
  A values[PW][COB];
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t n = row / g.out_h, ho = row % g.out_h;
    for (int64_t group = 0; group < g.groups; ++group)
      for (int64_t co0 = 0; co0 < g.out_c_per_group; co0 += COB)
        for (int64_t wo0 = 0; wo0 < g.out_w; wo0 += PW) {
          const int npix = static_cast<int>(std::min<int64_t>(PW, g.out_w - wo0));
          kernels::conv_tile<PW>(g, x, packed, zeros.data(), n, ho, wo0, npix, group,
                                               co0, acc);
          for (int p = 0; p < PW; ++p) kernels::lane_store_acc(values[p], acc[p]);
          epilogue(n, ho, wo0, npix, group * g.out_c_per_group + co0, values);
        }
  }
}

}  // namespace regnet_ext::cpu
