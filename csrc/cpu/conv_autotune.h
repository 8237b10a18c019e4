// Which kernel runs a conv on the CPU where both oneDNN and one of ours can: chosen by timing
// each on the first call of each shape (autotuning, like torch.backends.cudnn.benchmark), or by
// the fixed rules of conv_bn_act_cpu.h. Forward: oneDNN or our narrow-group or Winograd kernel
// (grouped convs), oneDNN or one GEMM with our epilogue (1x1 convs); backward: which of oneDNN,
// our weight-gradient tiles and Winograd compute the two gradients (1x1 convs: oneDNN or two GEMMs).
//
// Why: the rules were measured on one VM, and another VM of the same kind disagreed. On
// 2026-12-03 the narrow-group kernel ran at 0.59-0.92x of oneDNN's speed on RegNetY-400MF's
// batch-8 shapes with 104 and 208 channels, where on 2026-11-22 it had been 1.04-1.36x; a user's
// CPU differs more. Timing on the user's machine, with the user's shapes, keeps whichever is
// faster there.
//
// The choice is made once per (pass, dtype, geometry, epilogue, thread count) and process, by
// interleaved rounds of each candidate after a warm-up call (which also packs and caches the
// weights, so the rounds time what later calls cost), comparing medians; later calls look it up.
// Rounds in which the process took page faults are left out of a median where the candidate has
// rounds without (robust_median): they time the heap's growth into fresh pages, which the first
// forward of a model pays and later ones do not. Off (the
// rules decide) with REGNET_EXT_CPU_AUTOTUNE=0, under torch.use_deterministic_algorithms(True)
// (another process could choose the other kernel, whose results differ by rounding), and when
// REGNET_EXT_CPU_CONV forces a backend. A set of kernels can be left out of the choice
// (excluded_conv_kernels), for an A/B of one kernel inside a whole model in one process.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#if defined(__unix__)
#include <sys/resource.h>
#endif

#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

// What computes a conv pass. Forward: oneDNN, one of our kernels, or (1x1 convs) one ATen GEMM
// with our epilogue. Backward (a plan for both gradients): oneDNN for both in one call, our tiles
// for the weight gradient, Winograd or the narrow-group kernel for the input gradient, or both of
// ours.
enum class ConvKernel : int {
  kOneDnn = 0,
  kNarrow = 1,
  kWinograd = 2,
  kOwnWeightGrad = 3,
  kWinogradDx = 4,
  kWinogradDxOwnWeightGrad = 5,
  kGemm = 6,
  kNarrowDx = 7,
  kNarrowDxOwnWeightGrad = 8,
  kGemmTiles = 9,
  kStemTiles = 10,
  kWideGroup = 11,
};
inline constexpr int kConvKernelCount = 12;
// The backward passes differ in what they compute: both gradients, or only one of them.
enum class ConvPass : int { kEval = 0, kTrainForward = 1, kBackward = 2, kBackwardInput = 3, kBackwardWeight = 4 };

inline const char* conv_kernel_name(ConvKernel k) {
  switch (k) {
    case ConvKernel::kNarrow: return "narrow";
    case ConvKernel::kWinograd: return "winograd";
    case ConvKernel::kGemm: return "gemm";
    case ConvKernel::kGemmTiles: return "gemm_tiles";
    case ConvKernel::kStemTiles: return "stem_tiles";
    case ConvKernel::kWideGroup: return "wide_group";
    case ConvKernel::kOwnWeightGrad: return "onednn_input_grad+own_weight_grad";
    case ConvKernel::kWinogradDx: return "winograd_input_grad+onednn_weight_grad";
    case ConvKernel::kWinogradDxOwnWeightGrad: return "winograd_input_grad+own_weight_grad";
    case ConvKernel::kNarrowDx: return "narrow_input_grad+onednn_weight_grad";
    case ConvKernel::kNarrowDxOwnWeightGrad: return "narrow_input_grad+own_weight_grad";
    case ConvKernel::kOneDnn: break;
  }
  return "onednn";
}

inline const char* conv_pass_name(ConvPass p) {
  switch (p) {
    case ConvPass::kTrainForward: return "train_forward";
    case ConvPass::kBackward: return "backward";
    case ConvPass::kBackwardInput: return "backward_input";
    case ConvPass::kBackwardWeight: return "backward_weight";
    case ConvPass::kEval: break;
  }
  return "eval";
}

// Which code computes a KxK or grouped conv on the CPU. Measured on this machine's CPU, oneDNN's
// JIT kernels through ATen beat our register tiles (kernels::conv_tile) for the forward and the
// input gradient on every RegNet shape, so by default the CPU runs them, with our BN fold,
// statistics and epilogues around them; the weight gradient goes by use_own_weight_grad.
// REGNET_EXT_CPU_CONV=tiles selects our tiles everywhere (the tests run them on every shape,
// since they are the arithmetic the CUDA kernels share); =aten selects ATen everywhere; =own
// selects our grouped-conv kernels wherever they apply, the whole-tensor GEMM for 1x1 convs and our
// weight-gradient tiles for every grouped conv, oneDNN elsewhere (so the tests cover them on any
// shape); =gemm_tiles is =own with our GEMM tiles (gemm_1x1_tiles.h, gemm_1x1_weight_grad.h)
// in place of the whole-tensor GEMM for 1x1 convs; =wide_group is =own with our wide-group tiles
// (grouped_conv_wide.h) for the forward of grouped convs with a multiple of 16 channels per group
// from 32 on, in eval and training (their weight gradient comes from
// grouped_conv_wide_weight_grad.h wherever our weight gradient runs, except under =tiles);
// unset (or anything else) is the measured mix: the autotuner's choice, or the fixed rules of
// conv_bn_act_cpu.h.
enum class ConvBackend { kMixed, kAten, kTiles, kOwn };

inline std::string_view conv_backend_setting() {
  const char* choice = std::getenv("REGNET_EXT_CPU_CONV");
  return choice ? std::string_view(choice) : std::string_view();
}

inline ConvBackend conv_backend() {
  const std::string_view c = conv_backend_setting();
  if (c == "tiles") return ConvBackend::kTiles;
  if (c == "aten") return ConvBackend::kAten;
  if (c == "own" || c == "gemm_tiles" || c == "wide_group") return ConvBackend::kOwn;
  // A misspelt setting would otherwise look like one that took effect.
  if (!c.empty()) {
    TORCH_WARN_ONCE("REGNET_EXT_CPU_CONV=", c, " is not one of tiles, aten, own, gemm_tiles, wide_group: ",
                    "the measured mix runs");
  }
  return ConvBackend::kMixed;
}

// REGNET_EXT_CPU_CONV=gemm_tiles (see above).
inline bool gemm_tiles_forced() { return conv_backend_setting() == "gemm_tiles"; }
// REGNET_EXT_CPU_CONV=wide_group (see above).
inline bool wide_group_forced() { return conv_backend_setting() == "wide_group"; }

// The switches in this file's header comment; regnet_ext.ops.cpu_conv_autotune_enabled asks this.
inline bool conv_autotune_enabled() {
  const char* v = std::getenv("REGNET_EXT_CPU_AUTOTUNE");
  if (v != nullptr && std::strcmp(v, "0") == 0) return false;
  if (v != nullptr && *v != '\0' && std::strcmp(v, "1") != 0) {
    TORCH_WARN_ONCE("REGNET_EXT_CPU_AUTOTUNE=", v, " is neither 0 (off) nor 1 (on): the autotuner stays on");
  }
  return conv_backend() == ConvBackend::kMixed && !at::globalContext().deterministicAlgorithms();
}

// The kernels the autotuner leaves out of its candidates, a bit per ConvKernel (set from Python by
// regnet_ext.ops.cpu_conv_autotune_excluding): one process can then time a whole model with and
// without a kernel, round after round, where separate processes differ by more than the effect
// (2-core VMs: +-20% between processes). Part of the table's key, so each set keeps its choices.
inline std::atomic<uint32_t>& excluded_conv_kernels() {
  static std::atomic<uint32_t> mask{0};
  return mask;
}

inline bool is_excluded(ConvKernel k, uint32_t excluded) { return (excluded >> static_cast<int>(k)) & 1u; }

// One decision: the call shape it is for, what each candidate took (median, microseconds) and
// the winner.
struct ConvAutotuneRecord {
  ConvPass pass;
  at::ScalarType dtype;
  kernels::ConvGeometry geometry;
  bool relu, residual;
  int threads;
  uint32_t excluded;  // excluded_conv_kernels() when it was made
  ConvKernel chosen;
  struct Candidate {
    ConvKernel kernel;
    double median_us;                  // robust_median of the rounds
    std::vector<double> rounds_us;     // each timed round
    std::vector<int64_t> round_faults; // the page faults the process took during it
  };
  std::vector<Candidate> candidates;
};

// This process's minor page faults so far (0 where getrusage is missing).
inline int64_t minor_page_faults() {
#if defined(__unix__)
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) == 0) return usage.ru_minflt;
#endif
  return 0;
}

// The median of the samples whose rounds took no page fault (faults[i] == 0), or of all samples
// where every round took some (the upper median of an even count). The page faults of a fresh
// 12.8 MB output (3,136 of them) took 3.4 ms of the stem conv's first calls at batch 8, whose
// later calls took 1.1 ms (2-core AMD EPYC VM, 2026-12-05): timed with them, a kernel lost the
// choice to one that had drawn reused memory.
inline double robust_median(const std::vector<double>& samples, const std::vector<int64_t>& faults) {
  std::vector<double> kept;
  for (size_t i = 0; i < samples.size(); ++i)
    if (faults[i] == 0) kept.push_back(samples[i]);
  if (kept.empty()) kept = samples;
  std::nth_element(kept.begin(), kept.begin() + kept.size() / 2, kept.end());
  return kept[kept.size() / 2];
}

class ConvAutotuneTable {
 public:
  using Key = std::tuple<int, int, std::array<int64_t, 9>, bool, bool, int, uint32_t>;

  static ConvAutotuneTable& instance() {
    static ConvAutotuneTable table;
    return table;
  }

  static Key key_of(ConvPass pass, at::ScalarType dtype, const kernels::ConvGeometry& g, bool relu,
                    bool residual, uint32_t excluded) {
    // The thread count too: the faster kernel on two threads need not be the faster on one.
    return {static_cast<int>(pass), static_cast<int>(dtype),
            {g.batch, g.in_c, g.in_h, g.in_w, g.out_c, g.kernel, g.stride, g.padding, g.groups}, relu, residual,
            at::get_num_threads(), excluded};
  }

  std::optional<ConvKernel> find(const Key& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = records_.find(key);
    if (it == records_.end()) return std::nullopt;
    return it->second.chosen;
  }

  void insert(const Key& key, ConvAutotuneRecord record) {
    std::lock_guard<std::mutex> lock(mutex_);
    records_.emplace(key, std::move(record));  // a concurrent tuning of the same shape keeps the first
  }

  std::vector<ConvAutotuneRecord> records() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<ConvAutotuneRecord> out;
    for (const auto& [key, record] : records_) out.push_back(record);
    return out;
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    records_.clear();
  }

 private:
  std::mutex mutex_;
  std::map<Key, ConvAutotuneRecord> records_;
};

// The kernel for this call: `rule` where there is nothing to choose from (fewer than two
// candidates, or none left by the exclusions) or autotuning is off; the one candidate the
// exclusions leave; else the recorded choice, or the fastest candidate timed now with
// run(kernel), which must compute the whole pass with that kernel (its result is dropped; the
// caller runs the winner).
inline ConvKernel choose_conv_kernel(ConvPass pass, at::ScalarType dtype, const kernels::ConvGeometry& g, bool relu,
                                     bool residual, const std::vector<ConvKernel>& all_candidates, ConvKernel rule,
                                     const std::function<void(ConvKernel)>& run) {
  if (all_candidates.size() < 2 || !conv_autotune_enabled()) return rule;
  const uint32_t excluded = excluded_conv_kernels().load(std::memory_order_relaxed);
  std::vector<ConvKernel> candidates;
  for (ConvKernel k : all_candidates)
    if (!is_excluded(k, excluded)) candidates.push_back(k);
  if (candidates.empty()) return rule;
  if (candidates.size() == 1) return candidates[0];
  ConvAutotuneTable& table = ConvAutotuneTable::instance();
  const ConvAutotuneTable::Key key = ConvAutotuneTable::key_of(pass, dtype, g, relu, residual, excluded);
  if (const std::optional<ConvKernel> known = table.find(key)) return *known;

  using Clock = std::chrono::steady_clock;
  auto seconds_of = [&](ConvKernel k, int64_t* faults = nullptr) {
    const int64_t faults_before = faults ? minor_page_faults() : 0;
    const auto t0 = Clock::now();
    run(k);
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (faults) *faults = minor_page_faults() - faults_before;
    return seconds;
  };
  // Warm-up (weights packed, oneDNN's kernel generated), then about 20 ms of interleaved rounds
  // per candidate: 3 for the slowest layers, up to 15 for the small ones, whose times are the
  // noisiest.
  double slowest = 0;
  for (ConvKernel k : candidates) slowest = std::max(slowest, seconds_of(k));
  const int rounds = std::clamp(static_cast<int>(0.02 / std::max(slowest, 1e-6)), 3, 15);
  ConvAutotuneRecord record{pass, dtype, g, relu, residual, at::get_num_threads(), excluded, candidates[0], {}};
  for (ConvKernel k : candidates) record.candidates.push_back({k, 0.0, {}, {}});
  for (int r = 0; r < rounds; ++r)
    for (auto& c : record.candidates) {
      int64_t faults = 0;
      c.rounds_us.push_back(seconds_of(c.kernel, &faults) * 1e6);
      c.round_faults.push_back(faults);
    }
  double best_us = 0;
  for (size_t i = 0; i < record.candidates.size(); ++i) {
    auto& c = record.candidates[i];
    c.median_us = robust_median(c.rounds_us, c.round_faults);
    if (i == 0 || c.median_us < best_us) {
      best_us = c.median_us;
      record.chosen = c.kernel;
    }
  }
  const ConvKernel chosen = record.chosen;
  table.insert(key, std::move(record));
  return chosen;
}

}  // namespace regnet_ext::cpu
