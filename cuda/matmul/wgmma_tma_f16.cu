// The persistent TMA wgmma kernel of the DS-mode ops for __half (see wgmma_tma.cuh).
#include "wgmma_tma.cuh"

namespace jax_blocksparse {
namespace wgt {
JBS_WGT_LAUNCHERS(template, __half)
}  // namespace wgt
}  // namespace jax_blocksparse
