// Hopper wgmma kernels of the DS-mode ops for __half (see wgmma_lines.cuh).
#include "wgmma_lines.cuh"

namespace jax_blocksparse {
namespace wg {
JBS_WGMMA_LAUNCHERS(template, __half)
}  // namespace wg
}  // namespace jax_blocksparse
