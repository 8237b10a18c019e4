// CPU running-statistics update of conv_bn_act's training mode, exactly as nn.BatchNorm2d:
// running = (1 - f) * running + f * batch, with the unbiased batch variance, where f is the
// momentum, or 1 / num_batches_tracked for the cumulative average (momentum=None).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "checks.h"
#include "kernels/bn_stats.h"

namespace regnet_ext::cpu {
namespace {

constexpr const char* kOp = "conv_bn_act_update_running_stats";

void update_running_stats_cpu(at::Tensor& running_mean, at::Tensor& running_var,
                              const at::Tensor& batch_mean, const at::Tensor& batch_var,
                              const std::optional<at::Tensor>& num_batches_tracked, int64_t count,
                              double momentum, bool cumulative) {
  checks::check_running_stats_update(kOp, running_mean, running_var, batch_mean, batch_var,
                                     num_batches_tracked, count);
  const int64_t c = running_mean.numel();
  double factor = momentum;
  if (cumulative) {
    TORCH_CHECK(num_batches_tracked.has_value() && num_batches_tracked->numel() == 1, kOp,
                ": momentum=None (cumulative average) needs num_batches_tracked");
    const int64_t batches = num_batches_tracked->item<int64_t>();
    TORCH_CHECK(batches >= 1, kOp, ": num_batches_tracked must be >= 1 after counting this batch");
    factor = 1.0 / static_cast<double>(batches);
  }
  // The batch statistics are read in their own (accumulation) type: converting them to double
  // first cost two tensor copies per training call.
  const at::Tensor bm = batch_mean.contiguous(), bv = batch_var.to(batch_mean.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, running_mean.scalar_type(), kOp, [&] {
    using R = scalar_t;
    R* rm = running_mean.data_ptr<R>();
    R* rv = running_var.data_ptr<R>();
    AT_DISPATCH_FLOATING_TYPES(bm.scalar_type(), kOp, [&] {  // accumulation types: float, double
      const scalar_t* bmp = bm.const_data_ptr<scalar_t>();
      const scalar_t* bvp = bv.const_data_ptr<scalar_t>();
      for (int64_t i = 0; i < c; ++i) {
        double m = static_cast<double>(rm[i]), v = static_cast<double>(rv[i]);
        kernels::running_stat_update(m, v, static_cast<double>(bmp[i]), static_cast<double>(bvp[i]),
                                     static_cast<double>(count), factor);
        rm[i] = static_cast<R>(m);
        rv[i] = static_cast<R>(v);
      }
    });
  });
}

}  // namespace
}  // namespace regnet_ext::cpu

TORCH_LIBRARY_IMPL(regnet_ext, CPU, m) {
  m.impl("conv_bn_act_update_running_stats", &regnet_ext::cpu::update_running_stats_cpu);
}
