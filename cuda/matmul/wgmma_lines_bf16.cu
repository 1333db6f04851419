// Hopper wgmma kernels of the DS-mode ops for __nv_bfloat16 (see wgmma_lines.cuh).
#include "wgmma_lines.cuh"

namespace jax_blocksparse {
namespace wg {
JBS_WGMMA_LAUNCHERS(template, __nv_bfloat16)
}  // namespace wg
}  // namespace jax_blocksparse
