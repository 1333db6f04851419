// Hopper wgmma kernels of the DS-mode ops for __half (see matmul_wgmma_impl.cuh).
#include "matmul_wgmma_impl.cuh"

namespace jax_blocksparse {
namespace wg {
JBS_WGMMA_LAUNCHERS(template, __half)
}  // namespace wg
}  // namespace jax_blocksparse
