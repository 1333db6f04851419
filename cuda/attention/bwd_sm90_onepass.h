// The one-pass Hopper (sm_90a) attention backward with a deterministic dQ accumulation
// (bwd_sm90_onepass.cu): launchers named by the dispatch table (dispatch.cu) as backward
// variant 4.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace jax_blocksparse {
namespace attn {

struct Args;

// The backward of attention.h's semantics (delta, dQ, dK, dV) for block size 128 and head
// dim D (64, 128), T __nv_bfloat16 or __half, in one pass over the by-key lists: dQ is
// summed in the float32 workspace a.dq_accum ([kOnePassDqSlots, B, Hq, Tq, D] elements,
// layout private to the kernel) in a fixed order guarded by the int32 semaphores a.dq_sem
// ([kOnePassDqSlots, B, Hq, Tq / 64], then the persistent grid's item counter); the
// semaphores and the counter are zeroed here (cudaMemsetAsync),
// dq_accum needs no zeroing (each tile's first adder stores). cudaErrorNotSupported on a device that is not sm_90 (or a build
// without sm_90a code) and for calls beyond the scope (lists per batch entry, Tq or Tk not
// multiples of 128), cudaErrorInvalidValue for operands TMA cannot address (not 16-byte
// aligned) or missing workspaces. Tq = 0 or Tk = 0 runs the FA2 backward (no tensor map).
template <typename T, int D>
cudaError_t RunBackwardSm90OnePass(const Args& a, cudaStream_t stream);

// Instrumentation (benchmarks/attention_harness.cu --timeline): `buffer` (device memory,
// zeroed, kOnePassTimelineSlots int64 per CTA of the one-pass kernel, or null to stop)
// receives each CTA's timeline (bwd_sm90_onepass.cu, TimelineSlot) on later launches.
constexpr int kOnePassTimelineSlots = 16;
cudaError_t SetOnePassTimeline(long long* buffer);

// dQ sums of a query tile in dQ slots (bwd_sm90_onepass.cu, header comment): the key
// blocks of long lists (at least half the query tiles) add into slot 1, the others into
// slot 0; with S = 4 or 8 slots a tile of a long query line (listing at least half the key
// blocks) spreads slot 0's adders over slots 0, 2, ..., S - 1 in turn, one ordered chain a
// slot. dQ is the slots' sum in slot order. 2, 4 or 8 (OnePassDqSlotsValid; Args::dq_slots,
// from the workspace's size: jax_blocksparse/_cuda.py onepass_dq_slots chooses 2 or 4,
// JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS=8 asks for 8).
constexpr int kOnePassDqSlots = 2;
constexpr int kOnePassDqSlotsMax = 8;
inline bool OnePassDqSlotsValid(int64_t slots) {
  return slots == kOnePassDqSlots || slots == 4 || slots == kOnePassDqSlotsMax;
}

// Elements of the two workspaces for (B, Hq, Tq, D) and `slots` dQ slots: dq_accum
// (float32) and the semaphores (int32: one per slot and 64-row tile, and the item counter
// of JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT); jax_blocksparse/_cuda.py declares the
// same sizes.
inline int64_t OnePassDqAccumElements(int64_t batch, int64_t hq, int64_t tq, int64_t d,
                                      int64_t slots = kOnePassDqSlots) {
  return slots * batch * hq * tq * d;
}
inline int64_t OnePassSemaphoreElements(int64_t batch, int64_t hq, int64_t tq,
                                        int64_t slots = kOnePassDqSlots) {
  return slots * batch * hq * (tq / 64) + 1;
}

#define JBS_ATTENTION_BWD_SM90_ONEPASS_LAUNCHERS(PREFIX, T)                   \
  PREFIX cudaError_t RunBackwardSm90OnePass<T, 64>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t RunBackwardSm90OnePass<T, 128>(const Args&, cudaStream_t);

}  // namespace attn
}  // namespace jax_blocksparse
