// Launcher of the NHWC grouped 3x3 conv kernel (grouped_conv3x3.cu). Host code passes raw
// pointers and the params struct (grouped_conv3x3_tile.h), so the kernel file needs no ATen headers.
#pragma once

#include <cuda_runtime.h>

#include "cuda/element_type.h"
#include "cuda/grouped_conv3x3_tile.h"

namespace regnet_ext::cuda {

// Whether the kernel handles this geometry (else the caller takes the ATen path).
bool grouped_conv3x3_supported(const kernels::ConvGeometry& g);

// Number of pixel tiles per image (rows of stat_partials per sample).
int64_t grouped_conv3x3_tiles_per_image(const kernels::ConvGeometry& g);

// Launches on `stream`; checks the launch.
void launch_grouped_conv3x3(const GroupedConv3x3Params& p, ElementType dtype, cudaStream_t stream);

}  // namespace regnet_ext::cuda
