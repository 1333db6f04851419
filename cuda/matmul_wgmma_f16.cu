// Hopper wgmma kernels of the DS-mode ops for __half (see matmul_wgmma_impl.cuh).
#include "matmul_wgmma_impl.cuh"

namespace jax_blocksparse {
namespace wg {
template bool WgmmaUsable<__half>(const tc::TcArgs&, int);
template cudaError_t LaunchWgmma<__half>(const tc::TcArgs&, int, cudaStream_t);
}  // namespace wg
}  // namespace jax_blocksparse
