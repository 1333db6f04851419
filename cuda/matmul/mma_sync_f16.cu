// Tensor-core kernels of the matmul family for __half (see tc_tile.cuh).
#include "mma_sync.cuh"

namespace jax_blocksparse {
namespace tc {
JBS_TC_LAUNCHERS(template, __half)
JBS_TC_RUNS_LAUNCHERS(template, __half)
}  // namespace tc
}  // namespace jax_blocksparse
