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
  checks::check_running_stats_update(kOp, running_mean, running_var, batch_mean, batch_var, count);
  const int64_t c = running_mean.numel();
  double factor = momentum;
  if (cumulative) {
    TORCH_CHECK(num_batches_tracked.has_value() && num_batches_tracked->numel() == 1, kOp,
                ": momentum=None (cumulative average) needs num_batches_tracked");
    const int64_t batches = num_batches_tracked->item<int64_t>();
    TORCH_CHECK(batches >= 1, kOp, ": num_batches_tracked must be >= 1 after counting this batch");
    factor = 1.0 / static_cast<double>(batches);
  }
  const at::Tensor bm = batch_mean.to(at::kDouble).contiguous(), bv = batch_var.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, running_mean.scalar_type(), kOp, [&] {
    scalar_t* rm = running_mean.data_ptr<scalar_t>();
    scalar_t* rv = running_var.data_ptr<scalar_t>();
    for (int64_t i = 0; i < c; ++i) {
      double m = static_cast<double>(rm[i]), v = static_cast<double>(rv[i]);
      kernels::running_stat_update(m, v, bm.data_ptr<double>()[i], bv.data_ptr<double>()[i],
                                   static_cast<double>(count), factor);
      rm[i] = static_cast<scalar_t>(m);
      rv[i] = static_cast<scalar_t>(v);
    }
  });
}

}  // namespace
}  // namespace regnet_ext::cpu

TORCH_LIBRARY_IMPL(regnet_ext, CPU, m) {
  m.impl("conv_bn_act_update_running_stats", &regnet_ext::cpu::update_running_stats_cpu);
}
