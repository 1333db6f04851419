// Tensor-core kernels of the matmul family for __nv_bfloat16 (see tc_tile.cuh).
#include "mma_sync.cuh"

namespace jax_blocksparse {
namespace tc {
JBS_TC_LAUNCHERS(template, __nv_bfloat16)
JBS_TC_RUNS_LAUNCHERS(template, __nv_bfloat16)
}  // namespace tc
}  // namespace jax_blocksparse
