// The SDD-mode TMA wgmma kernel (block-row runs) for __nv_bfloat16 (see wgmma_sdd_tma.cuh).
#include "wgmma_sdd_tma.cuh"

namespace jax_blocksparse {
namespace wgr {
JBS_WGR_LAUNCHERS(template, __nv_bfloat16)
}  // namespace wgr
}  // namespace jax_blocksparse
