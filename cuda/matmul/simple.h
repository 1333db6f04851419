// Launchers of the simple (one thread per output element) kernels, simple.cu.
#pragma once

#include "../matmul.h"

namespace jax_blocksparse {

cudaError_t LaunchSddSimple(DType dtype, const SddParams& p, cudaStream_t stream);
cudaError_t LaunchDsdSimple(DType dtype, const DsdParams& p, cudaStream_t stream);
cudaError_t LaunchDdsSimple(DType dtype, const DdsParams& p, cudaStream_t stream);

}  // namespace jax_blocksparse
