// Fused attention kernels instantiated for __half (one file per dtype: parallel builds).
#include "attention_kernels.cuh"

namespace jax_blocksparse {
namespace attn {

cudaError_t ForwardF16(const Args& a, int head_dim, cudaStream_t stream) {
  return head_dim == 64 ? RunForward<__half, 64>(a, stream) : RunForward<__half, 128>(a, stream);
}

cudaError_t BackwardF16(const Args& a, int head_dim, cudaStream_t stream) {
  return head_dim == 64 ? RunBackward<__half, 64>(a, stream) : RunBackward<__half, 128>(a, stream);
}

}  // namespace attn
}  // namespace jax_blocksparse
