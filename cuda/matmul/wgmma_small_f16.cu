// Hopper wgmma kernel of the DS-mode ops at block sizes 16/32 for __half (see
// wgmma_small.cuh).
#include "wgmma_small.cuh"

namespace jax_blocksparse {
namespace wgs {
JBS_WGS_LAUNCHERS(template, __half)
}  // namespace wgs
}  // namespace jax_blocksparse
