// Tensor-core kernels of the matmul family for float (see tc_tile.cuh).
#include "matmul_tc_impl.cuh"

namespace jax_blocksparse {
namespace tc {
JBS_TC_LAUNCHERS(template, float)
}  // namespace tc
}  // namespace jax_blocksparse
