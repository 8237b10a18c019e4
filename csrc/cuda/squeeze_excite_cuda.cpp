// CUDA implementation of regnet_ext::squeeze_excite and its backward: host orchestration of the
// kernels in squeeze_excite_kernels.cu (device guard, current stream, float workspaces).
//
// Forward: pool pass (reads x), excite kernel, scale pass (reads x, writes y). Backward: one pass
// over x and dy for the pooled means and dg, the excite backward kernel, cuBLAS GEMMs for the
// weight gradients of the two linear layers (tiny [C x C_se] GEMMs over the batch: cuBLAS reaches
// tensor-core speed, a hand-written kernel would not), and the dx pass.
// channels_last is the fast path; NCHW runs its own pooling kernel and the same elementwise passes.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "cuda/element_type_of.h"
#include "cuda/squeeze_excite_kernels.h"
#include "tensor_layout.h"

namespace regnet_ext::cuda {
namespace {

constexpr const char* kOp = "squeeze_excite (CUDA)";

ElementType element_type(const at::Tensor& x) { return element_type_of(x, kOp); }

void check_linear_weight(const at::Tensor& w, const char* name, int64_t rows, int64_t cols, const at::Tensor& x) {
  checks::check_like(kOp, x, "x", w, name);
  TORCH_CHECK((w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1)) && w.size(0) == rows &&
                  w.size(1) == cols,
              kOp, ": ", name, " must be [", rows, ", ", cols, "] or [", rows, ", ", cols, ", 1, 1], got ",
              w.sizes());
}

SeShapeCuda check_inputs(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                         const at::Tensor& w2, const at::Tensor& b2) {
  checks::check_rank(kOp, x, 4, "x [N, C, H, W]");
  TORCH_CHECK(x.is_cuda(), kOp, ": x must be a CUDA tensor, got ", x.device());
  element_type(x);
  TORCH_CHECK(x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0, kOp,
              ": x needs at least one channel and one pixel, got ", x.sizes());
  TORCH_CHECK(w1.dim() >= 1 && w1.size(0) > 0, kOp, ": w1 must have at least one row, got ", w1.sizes());
  const int64_t channels = x.size(1), hidden = w1.size(0);
  check_linear_weight(w1, "w1", hidden, channels, x);
  check_linear_weight(w2, "w2", channels, hidden, x);
  checks::check_like(kOp, x, "x", b1, "b1");
  checks::check_vector(kOp, b1, hidden, "b1");
  checks::check_like(kOp, x, "x", b2, "b2");
  checks::check_vector(kOp, b2, channels, "b2");
  TORCH_CHECK(2 * (channels + hidden) <= kSeMaxMlpFloats, kOp, ": channels + hidden (", channels + hidden,
              ") exceeds what the CUDA MLP kernel holds in shared memory (", kSeMaxMlpFloats / 2, ")");
  const bool channels_last = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return {x.size(0), channels, hidden, x.size(2) * x.size(3), channels_last};
}

at::MemoryFormat layout_of(const SeShapeCuda& s) {
  return s.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

at::Tensor as_float_matrix(const at::Tensor& w, int64_t rows, int64_t cols) {
  return w.reshape({rows, cols}).to(at::kFloat).contiguous();
}

at::Tensor squeeze_excite_cuda(const at::Tensor& x_in, const at::Tensor& w1_in, const at::Tensor& b1_in,
                               const at::Tensor& w2_in, const at::Tensor& b2_in) {
  const SeShapeCuda s = check_inputs(x_in, w1_in, b1_in, w2_in, b2_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(layout_of(s));
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(layout_of(s)));
  if (s.batch == 0) return y;
  const auto f32 = x.options().dtype(at::kFloat);
  const at::Tensor w1 = as_float_matrix(w1_in, s.hidden, s.channels);
  const at::Tensor w2 = as_float_matrix(w2_in, s.channels, s.hidden);
  const at::Tensor b1 = b1_in.to(at::kFloat).contiguous(), b2 = b2_in.to(at::kFloat).contiguous();
  const int64_t chunks = se_pool_chunks(s);
  at::Tensor partial = at::empty({s.batch * chunks, s.channels}, f32);
  at::Tensor mean = at::empty({s.batch, s.channels}, f32);
  at::Tensor z = at::empty({s.batch, s.hidden}, f32);
  at::Tensor gate = at::empty({s.batch, s.channels}, f32);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const ElementType dtype = element_type(x);
  launch_se_pool(x.const_data_ptr(), s, dtype, partial.data_ptr<float>(), stream);
  launch_se_excite(partial.const_data_ptr<float>(), chunks, w1.const_data_ptr<float>(), b1.const_data_ptr<float>(),
                   w2.const_data_ptr<float>(), b2.const_data_ptr<float>(), s, mean.data_ptr<float>(),
                   z.data_ptr<float>(), gate.data_ptr<float>(), stream);
  launch_se_scale(x.const_data_ptr(), gate.const_data_ptr<float>(), s, dtype, y.data_ptr(), stream);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x_in, const at::Tensor& w1_in, const at::Tensor& b1_in,
    const at::Tensor& w2_in, const at::Tensor& b2_in) {
  const SeShapeCuda s = check_inputs(x_in, w1_in, b1_in, w2_in, b2_in);
  checks::check_like("squeeze_excite_backward (CUDA)", x_in, "x", grad_y, "grad_y");
  checks::check_shape("squeeze_excite_backward (CUDA)", grad_y, x_in.sizes(), "grad_y");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(layout_of(s));
  const at::Tensor dy = grad_y.contiguous(layout_of(s));
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(layout_of(s)));
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dw1 = at::zeros({s.hidden, s.channels}, f32), db1 = at::zeros({s.hidden}, f32);
  at::Tensor dw2 = at::zeros({s.channels, s.hidden}, f32), db2 = at::zeros({s.channels}, f32);
  if (s.batch > 0) {
    const at::Tensor w1 = as_float_matrix(w1_in, s.hidden, s.channels);
    const at::Tensor w2 = as_float_matrix(w2_in, s.channels, s.hidden);
    const at::Tensor b1 = b1_in.to(at::kFloat).contiguous(), b2 = b2_in.to(at::kFloat).contiguous();
    const int64_t chunks = se_pool_chunks(s);
    at::Tensor pool_partial = at::empty({s.batch * chunks, s.channels}, f32);
    at::Tensor dgate_partial = at::empty({s.batch * chunks, s.channels}, f32);
    at::Tensor mean = at::empty({s.batch, s.channels}, f32), gate = at::empty({s.batch, s.channels}, f32);
    at::Tensor z = at::empty({s.batch, s.hidden}, f32), dz = at::empty({s.batch, s.hidden}, f32);
    at::Tensor dpre2 = at::empty({s.batch, s.channels}, f32), ds_mean = at::empty({s.batch, s.channels}, f32);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const ElementType dtype = element_type(x);
    launch_se_pool_and_gate_grad(x.const_data_ptr(), dy.const_data_ptr(), s, dtype, pool_partial.data_ptr<float>(),
                                 dgate_partial.data_ptr<float>(), stream);
    launch_se_excite_backward(pool_partial.const_data_ptr<float>(), dgate_partial.const_data_ptr<float>(), chunks,
                              w1.const_data_ptr<float>(), b1.const_data_ptr<float>(), w2.const_data_ptr<float>(),
                              b2.const_data_ptr<float>(), s, mean.data_ptr<float>(), z.data_ptr<float>(),
                              dpre2.data_ptr<float>(), dz.data_ptr<float>(), ds_mean.data_ptr<float>(),
                              gate.data_ptr<float>(), stream);
    // dW2 = dpre2^T z, dW1 = dz^T mean: GEMMs over the batch (cuBLAS, float).
    at::mm_out(dw2, dpre2.t(), z);
    at::sum_out(db2, dpre2, {0});
    at::mm_out(dw1, dz.t(), mean);
    at::sum_out(db1, dz, {0});
    launch_se_input_grad(dy.const_data_ptr(), gate.const_data_ptr<float>(), ds_mean.const_data_ptr<float>(), s,
                         dtype, dx.data_ptr(), stream);
  }
  return std::make_tuple(dx, in_layout_of(dw1.to(w1_in.scalar_type()).reshape(w1_in.sizes()), w1_in),
                         db1.to(b1_in.scalar_type()),
                         in_layout_of(dw2.to(w2_in.scalar_type()).reshape(w2_in.sizes()), w2_in),
                         db2.to(b2_in.scalar_type()));
}

}  // namespace
}  // namespace regnet_ext::cuda

TORCH_LIBRARY_IMPL(regnet_ext, CUDA, m) {
  m.impl("squeeze_excite", &regnet_ext::cuda::squeeze_excite_cuda);
  m.impl("squeeze_excite_backward", &regnet_ext::cuda::squeeze_excite_backward_cuda);
}
