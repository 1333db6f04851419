// Fused attention kernels instantiated for __nv_bfloat16 (one file per dtype: parallel builds).
#include "attention_kernels.cuh"

namespace jax_blocksparse {
namespace attn {

cudaError_t ForwardBf16(const Args& a, int head_dim, cudaStream_t stream) {
  return head_dim == 64 ? RunForward<__nv_bfloat16, 64>(a, stream) : RunForward<__nv_bfloat16, 128>(a, stream);
}

cudaError_t BackwardBf16(const Args& a, int head_dim, cudaStream_t stream) {
  return head_dim == 64 ? RunBackward<__nv_bfloat16, 64>(a, stream) : RunBackward<__nv_bfloat16, 128>(a, stream);
}

}  // namespace attn
}  // namespace jax_blocksparse
