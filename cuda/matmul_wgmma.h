// Hopper (sm_90a) path of the DS-mode ops (dds, and dsd run as its transpose): wgmma
// kernels for 16-bit types and block sizes 64 / 128 (matmul_wgmma_impl.cuh).
#pragma once

#include "tc_tile.cuh"

namespace jax_blocksparse {
namespace wg {

// Whether LaunchWgmma<T> can run `args` (a DS-mode launch) on the current device: 16-bit
// T, block size 64 or 128, 16-byte aligned operand rows, an sm_90 device and kernels built
// for sm_90a. Checked once per device (cached); no stream work.
template <typename T>
bool WgmmaUsable(const tc::TcArgs& args, int block_size);

// Launches the wgmma kernel; call only where WgmmaUsable said yes.
template <typename T>
cudaError_t LaunchWgmma(const tc::TcArgs& args, int block_size, cudaStream_t stream);

}  // namespace wg
}  // namespace jax_blocksparse
