// Hopper wgmma kernel of the DS-mode ops at block sizes 16/32 with one accumulator tile
// per line, for __half (see wgmma_group.cuh).
#include "wgmma_group.cuh"

namespace jax_blocksparse {
namespace wgg {
JBS_WGG_LAUNCHERS(template, __half)
}  // namespace wgg
}  // namespace jax_blocksparse
