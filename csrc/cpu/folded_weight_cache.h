// A process-wide cache of conv_bn_act's folded eval weights, packed for the kernel that runs
// them: oneDNN's blocked layout, or our narrow-group kernel's (grouped_conv_narrow.h).
//
// The eval operator folds BN into the conv weight on every call and hands oneDNN a plain weight,
// which oneDNN reorders into its blocked layout on every call: 120 us for a 1088-channel grouped
// 3x3 weight here, 10-25 us for small ones, often more than the convolution itself at batch 1.
// Callers that do not go through the fused modules' own cache (torch.compile'd or exported fused
// models, eval with autograd as in frozen-BN fine-tuning, direct operator calls) pay it each time.
//
// An entry is keyed on every tensor the fold reads: its TensorImpl, version counter and data
// pointer (an optimizer step, load_state_dict or any in-place write bumps the version; .to() or
// assign=True loads change the data pointer), plus eps, the input's shape past the batch and the
// conv geometry (and the batch, for oneDNN's layout: oneDNN packs a weight for one input shape,
// and a packing made for batch 1 ran a RegNetY-400MF's 1x1 convs 6x slower at batch 8). Up to
// kMaxShapesPerWeight call shapes of one weight are kept, the oldest dropped first, so a model
// served at a few batch sizes or resolutions keeps one packing for each. Entries hold weak
// references to those TensorImpls, so an address cannot be reused by another tensor while its
// entry exists. Not cached (computed per call as before):
// inference tensors (they have no version counter). Writes through `.data` or `.detach()` views
// do not bump the version: REGNET_EXT_CPU_WEIGHT_CACHE=0 turns the cache off for such code. Nor
// do compiled graphs' writes into buffers they reuse: conv_bn_act_eval.uncached (library.cpp),
// which traces record, runs with the cache off.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <iterator>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "kernels/conv_bn_act.h"

namespace regnet_ext::cpu {

using WeakTensorImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

struct TensorStamp {
  std::optional<WeakTensorImpl> impl;        // empty for an undefined (absent) tensor
  const c10::TensorImpl* address = nullptr;
  int64_t version = 0;
  const void* data = nullptr;

  bool same(const TensorStamp& o) const {
    return address == o.address && version == o.version && data == o.data;
  }
  bool alive() const { return !impl || !impl->expired(); }
};

// The stamp of t, or nullopt where t has no version counter (an inference tensor).
inline std::optional<TensorStamp> stamp_of(const at::Tensor& t) {
  TensorStamp s;
  if (!t.defined()) return s;
  if (t.is_inference()) return std::nullopt;
  s.impl.emplace(t.getIntrusivePtr());
  s.address = t.unsafeGetTensorImpl();
  s.version = t._version();
  s.data = t.const_data_ptr();
  return s;
}

struct FoldKey {
  std::array<TensorStamp, 6> tensors;  // weight, conv bias, gamma, beta, running mean, running var
  double eps;
  std::array<int64_t, 7> shape;  // in_c, in_h, in_w, stride, padding, groups, batch (oneDNN's; else 0)
  at::ScalarType dtype;
  int layout;  // which kernel the packed weight is for (the caller's tag)

  // The same weight tensor in the same call shape, whatever its version: a newer fold of this
  // slot makes an older one unreachable (versions only grow).
  bool same_slot(const FoldKey& o) const { return same_weight(o) && shape == o.shape; }
  // The same weight tensor folded for the same kernel, in any call shape.
  bool same_weight(const FoldKey& o) const {
    return tensors[0].address == o.tensors[0].address && eps == o.eps && dtype == o.dtype && layout == o.layout;
  }
  bool same(const FoldKey& o) const {
    if (!same_slot(o)) return false;
    for (size_t i = 0; i < tensors.size(); ++i)
      if (!tensors[i].same(o.tensors[i])) return false;
    return true;
  }
  bool alive() const {
    for (const auto& t : tensors)
      if (!t.alive()) return false;
    return true;
  }
};

struct FoldedWeights {
  at::Tensor packed_weight;  // in the layout of the kernel that FoldKey::layout names
  at::Tensor bias;           // folded shift (undefined where the kernel takes it per call; the
                             // bfloat16 narrow kernel's: [scale; shift], its weight unfolded)
};

// Set while this thread runs conv_bn_act_eval.uncached (FoldedWeightCacheOff).
inline thread_local bool folded_weight_cache_off = false;

inline bool folded_weight_cache_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("REGNET_EXT_CPU_WEIGHT_CACHE");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled && !folded_weight_cache_off;
}

// Turns the cache off on this thread for its lifetime.
struct FoldedWeightCacheOff {
  bool was = folded_weight_cache_off;
  FoldedWeightCacheOff() { folded_weight_cache_off = true; }
  ~FoldedWeightCacheOff() { folded_weight_cache_off = was; }
};

class FoldedWeightCache {
 public:
  static FoldedWeightCache& instance() {
    static FoldedWeightCache cache;
    return cache;
  }

  // The cached entry for key, or make() stored under it. make() may return undefined tensors
  // (nothing is stored then).
  FoldedWeights get(const FoldKey& key, const std::function<FoldedWeights()>& make) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& e : entries_)
        if (e.key.same(key) && e.key.alive()) return e.value;
    }
    FoldedWeights value = make();  // outside the lock: a reorder can take 100 us
    if (!value.packed_weight.defined()) return value;
    std::lock_guard<std::mutex> lock(mutex_);
    // Dropped: entries whose tensors are gone, and older folds of this weight and call shape
    // (training with frozen BN calls eval with a new weight version every step).
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->key.alive() && !it->key.same_slot(key)) {
        ++it;
      } else {
        bytes_ -= entry_bytes(it->value);
        it = entries_.erase(it);
      }
    }
    entries_.push_back({key, value});
    bytes_ += entry_bytes(value);
    size_t shapes = 0;  // of this weight, newest first: the ones past kMaxShapesPerWeight go
    for (auto it = entries_.rbegin(); it != entries_.rend();) {
      if (it->key.same_weight(key) && ++shapes > kMaxShapesPerWeight) {
        bytes_ -= entry_bytes(it->value);
        it = std::make_reverse_iterator(entries_.erase(std::next(it).base()));
      } else {
        ++it;
      }
    }
    while (entries_.size() > kMaxEntries || (bytes_ > kMaxBytes && entries_.size() > 1)) {
      bytes_ -= entry_bytes(entries_.front().value);
      entries_.pop_front();
    }
    return value;
  }

  // (layout, call shape) of every entry whose tensors are alive, oldest first.
  std::vector<std::pair<int, std::array<int64_t, 7>>> shapes() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::pair<int, std::array<int64_t, 7>>> out;
    for (const auto& e : entries_)
      if (e.key.alive()) out.emplace_back(e.key.layout, e.key.shape);
    return out;
  }

 private:
  // Enough for every conv of the largest standard RegNet (RegNetY-32GF: 83), with room for a
  // few models and input sizes; the byte bound keeps the copies of big weights in check.
  static constexpr size_t kMaxEntries = 1024;
  static constexpr size_t kMaxShapesPerWeight = 4;
  static constexpr int64_t kMaxBytes = int64_t(1) << 30;
  struct Entry {
    FoldKey key;
    FoldedWeights value;
  };
  static int64_t entry_bytes(const FoldedWeights& v) {
    return static_cast<int64_t>(v.packed_weight.nbytes() + (v.bias.defined() ? v.bias.nbytes() : 0));
  }
  std::mutex mutex_;
  std::deque<Entry> entries_;
  int64_t bytes_ = 0;
};

}  // namespace regnet_ext::cpu
