// Hopper wgmma kernel of the DS-mode ops at block sizes 16/32 for __nv_bfloat16 (see
// matmul_wgmma_small_impl.cuh).
#include "matmul_wgmma_small_impl.cuh"

namespace jax_blocksparse {
namespace wgs {
JBS_WGS_LAUNCHERS(template, __nv_bfloat16)
}  // namespace wgs
}  // namespace jax_blocksparse
