// The Hopper (sm_90a) attention backward in the FlashAttention-3 design (bwd_sm90.cu):
// launchers named by the dispatch table (dispatch.cu) as backward variants 2 and 3.
#pragma once

#include <cuda_runtime_api.h>

namespace jax_blocksparse {
namespace attn {

struct Args;

// The backward of attention.h's semantics (delta, dQ, dK, dV) for block size 128 and head
// dim D (64, 128), T __nv_bfloat16 or __half. cudaErrorNotSupported on a device that is not
// sm_90 (or a build without sm_90a code), cudaErrorInvalidValue for operands TMA cannot
// address (not 16-byte aligned). Tq = 0 or Tk = 0 runs the FA2 backward (no tensor map).
// PIPE: inside a consumer warpgroup the products overlap the elementwise work (P while dP
// runs, dS while dV += P^T dO runs, dQ += dS K while the next S runs); without it each
// step waits for all its products (the straight version, kept to compare and as a
// fallback).
template <typename T, int D, bool PIPE>
cudaError_t RunBackwardSm90(const Args& a, cudaStream_t stream);

#define JBS_ATTENTION_BWD_SM90_LAUNCHERS(PREFIX, T)                           \
  PREFIX cudaError_t RunBackwardSm90<T, 64, true>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t RunBackwardSm90<T, 64, false>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t RunBackwardSm90<T, 128, true>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t RunBackwardSm90<T, 128, false>(const Args&, cudaStream_t); \
  PREFIX cudaError_t RunBackwardSm90<T, 96, true>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t RunBackwardSm90<T, 96, false>(const Args&, cudaStream_t);

// The same at head dim 256 (bwd_sm90_d256.cu: 64-row CTAs whose two consumer warpgroups
// own halves of the output columns and exchange P and dS through shared memory). Tq = 0
// or Tk = 0 zeroes the gradients nothing reaches (no tensor map).
template <typename T, bool PIPE>
cudaError_t RunBackwardSm90D256(const Args& a, cudaStream_t stream);

#define JBS_ATTENTION_BWD_SM90_D256_LAUNCHERS(PREFIX, T)                        \
  PREFIX cudaError_t RunBackwardSm90D256<T, true>(const Args&, cudaStream_t); \
  PREFIX cudaError_t RunBackwardSm90D256<T, false>(const Args&, cudaStream_t);

}  // namespace attn
}  // namespace jax_blocksparse
