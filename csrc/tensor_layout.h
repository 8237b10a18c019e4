// Host-side layout helper shared by the CPU and CUDA operators.
#pragma once

#include <ATen/ATen.h>

namespace regnet_ext {

// t's values in the strides empty_like(like) has (like's own, when like is dense), in t's dtype.
// A weight gradient in another layout than its Parameter costs a strided copy in AccumulateGrad
// (and a strided add on every later accumulation); the fake kernel promises this layout.
inline at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& like) {
  // empty_like keeps a dense tensor's strides, so only a non-dense `like` needs one to ask.
  const bool dense = like.is_non_overlapping_and_dense();
  const at::Tensor probe = dense ? like : at::empty_like(like, t.options());
  if (probe.strides() == t.strides()) return t;
  bool same_order = true;  // strides of size-1 dims (a 1x1 kernel's) do not move any element
  for (int64_t d = 0; d < t.dim(); ++d) same_order &= t.size(d) == 1 || t.stride(d) == probe.stride(d);
  if (same_order && t.is_non_overlapping_and_dense()) return t.as_strided(probe.sizes(), probe.strides());
  at::Tensor out = dense ? at::empty_like(like, t.options()) : probe;
  out.copy_(t);
  return out;
}

}  // namespace regnet_ext
