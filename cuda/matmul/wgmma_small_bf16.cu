// Hopper wgmma kernel of the DS-mode ops at block sizes 16/32 for __nv_bfloat16 (see
// wgmma_small.cuh).
#include "wgmma_small.cuh"

namespace jax_blocksparse {
namespace wgs {
JBS_WGS_LAUNCHERS(template, __nv_bfloat16)
}  // namespace wgs
}  // namespace jax_blocksparse
