// Hopper wgmma kernels of the DS-mode and SDD ops for float, read as tf32 (see
// wgmma_lines.cuh): K-major operands only.
#include "wgmma_lines.cuh"

namespace jax_blocksparse {
namespace wg {
JBS_WGMMA_TF32_LAUNCHERS(template)
}  // namespace wg
}  // namespace jax_blocksparse
