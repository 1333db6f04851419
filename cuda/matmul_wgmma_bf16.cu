// Hopper wgmma kernels of the DS-mode ops for __nv_bfloat16 (see matmul_wgmma_impl.cuh).
#include "matmul_wgmma_impl.cuh"

namespace jax_blocksparse {
namespace wg {
JBS_WGMMA_LAUNCHERS(template, __nv_bfloat16)
}  // namespace wg
}  // namespace jax_blocksparse
