// Hopper wgmma kernels of the DS-mode ops for __nv_bfloat16 (see matmul_wgmma_impl.cuh).
#include "matmul_wgmma_impl.cuh"

namespace jax_blocksparse {
namespace wg {
template bool WgmmaUsable<__nv_bfloat16>(const tc::TcArgs&, int);
template cudaError_t LaunchWgmma<__nv_bfloat16>(const tc::TcArgs&, int, cudaStream_t);
}  // namespace wg
}  // namespace jax_blocksparse
