// Tensor-core kernels of the matmul family for float (see tc_tile.cuh).
#include "matmul_tc_impl.cuh"

namespace jax_blocksparse {
namespace tc {
template cudaError_t LaunchTc<float>(const TcArgs&, int, cudaStream_t);
}  // namespace tc
}  // namespace jax_blocksparse
