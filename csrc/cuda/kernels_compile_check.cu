// Compiles the shared kernel math (csrc/kernels/*.h) for the device, for every scalar type the
// CUDA implementation will use, so CI catches device-incompatible code before any CUDA kernel
// exists. No torch headers: this translation unit only instantiates the templates.
// Check by hand: nvcc -std=c++20 -arch=sm_90 -I csrc -c csrc/cuda/kernels_compile_check.cu
// torch's CUDA build defines these to keep c10::Half unambiguous; this file uses CUDA's own 16-bit
// types and includes no torch header, so it takes their conversions back.
#undef __CUDA_NO_HALF_OPERATORS__
#undef __CUDA_NO_HALF_CONVERSIONS__
#undef __CUDA_NO_HALF2_OPERATORS__
#undef __CUDA_NO_BFLOAT16_CONVERSIONS__
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/bn_stats.h"
#include "kernels/conv_bn_act.h"
#include "kernels/conv_bn_act_backward.h"
#include "kernels/pool_linear.h"
#include "kernels/squeeze_excite.h"

namespace regnet_ext::kernels {

// The accumulation type of CUDA's 16-bit types is float, as for c10's on the host.
template <>
struct Acc<__half> {
  using type = float;
};
template <>
struct Acc<__nv_bfloat16> {
  using type = float;
};

namespace compile_check {

template <typename T>
__global__ void conv_bn_act_forward_math(ConvGeometry g, const T* x, const acc_t<T>* weight,
                                         const acc_t<T>* packed, const T* zeros, T* y) {
  using A = acc_t<T>;
  A point = conv_point(g, x, weight, 0, threadIdx.y, threadIdx.x, blockIdx.x);
  A tile[4];
  conv_tile<4>(g, x, packed, zeros, 0, threadIdx.y, threadIdx.x, 4, 0, 0, tile);
  MomentStats<A> stats = tile_moments(&tile[0], 4, 1);
  MomentStats<A> other = moment_stats_empty<A>();
  welford_push(other, point);
  chan_merge(stats, other);
  const ChannelAffine<A> folded = bn_fold(A(1), A(0), stats.mean, biased_variance(stats), A(1e-5), A(0));
  const ChannelAffine<A> batch = bn_affine(A(1), A(0), stats.mean, inv_std(biased_variance(stats), A(1e-5)));
  A rm = A(0), rv = A(1);
  running_stat_update(rm, rv, stats.mean, biased_variance(stats), stats.count, A(0.1));
  y[threadIdx.x] = store_as<T>(conv_epilogue(point, folded, load_acc(x[0]), true) +
                               bn_apply(tile[1], batch) + rm + rv);
}

template <typename T>
__global__ void conv_bn_act_backward_math(ConvGeometry g, const T* dz, const T* x,
                                          const acc_t<T>* weight, const acc_t<T>* packed_t,
                                          const T* zeros, T* dx, acc_t<T>* dw) {
  using A = acc_t<T>;
  A point = conv_input_grad_point(g, dz, weight, 0, threadIdx.y, threadIdx.x, blockIdx.x);
  A tile[4];
  conv_input_grad_tile<4>(g, dz, packed_t, zeros, 0, threadIdx.y, threadIdx.x, 4, 0, 0, tile);
  A wtile[4] = {};
  conv_weight_grad_tile<4>(g, x, dz, 0, threadIdx.y, 0, g.out_w, 0, 1, 1, 0, 0, wtile);
  BnGradSums<A> sums{relu_grad(point, tile[0], true), lane_load<A>(x)};
  bn_grad_sums_merge(sums, BnGradSums<A>{A(1), wtile[0]});
  const A xhat = normalized(point, A(0), A(1));
  dx[threadIdx.x] = store_as<T>(bn_train_input_grad(sums.sum_g, xhat, A(1), A(0), sums.sum_g_xhat));
  dw[conv_pack_transposed_index(g, blockIdx.x, 0, 0, 0) + conv_pack_index(g, 0, 0, 0, 0)] =
      bn_fold_gamma_grad(wtile[1], sums.sum_g, A(0), A(0), A(1));
}

template <typename A>
__global__ void pool_linear_math(const A* weight, const A* pooled, A* y) {
  y[threadIdx.x] = pool_linear_dot_step(se_pool_step(y[0], pooled[0]), weight[threadIdx.x], pooled[1]);
}

template __global__ void pool_linear_math<float>(const float*, const float*, float*);
template __global__ void pool_linear_math<double>(const double*, const double*, double*);
template __global__ void conv_bn_act_forward_math<float>(ConvGeometry, const float*, const float*, const float*, const float*, float*);
template __global__ void conv_bn_act_forward_math<double>(ConvGeometry, const double*, const double*, const double*, const double*, double*);
template __global__ void conv_bn_act_forward_math<__half>(ConvGeometry, const __half*, const float*, const float*, const __half*, __half*);
template __global__ void conv_bn_act_forward_math<__nv_bfloat16>(ConvGeometry, const __nv_bfloat16*, const float*, const float*, const __nv_bfloat16*, __nv_bfloat16*);
template __global__ void conv_bn_act_backward_math<float>(ConvGeometry, const float*, const float*, const float*, const float*, const float*, float*, float*);
template __global__ void conv_bn_act_backward_math<double>(ConvGeometry, const double*, const double*, const double*, const double*, const double*, double*, double*);
template __global__ void conv_bn_act_backward_math<__half>(ConvGeometry, const __half*, const __half*, const float*, const float*, const __half*, __half*, float*);
template __global__ void conv_bn_act_backward_math<__nv_bfloat16>(ConvGeometry, const __nv_bfloat16*, const __nv_bfloat16*, const float*, const float*, const __nv_bfloat16*, __nv_bfloat16*, float*);

}  // namespace compile_check
}  // namespace regnet_ext::kernels
