// The Hopper (sm_90a) attention forward in the FlashAttention-3 design (fwd_sm90.cu):
// launchers named by the dispatch table (dispatch.cu) as forward variant 2.
#pragma once

#include <cuda_runtime_api.h>

namespace jax_blocksparse {
struct AttentionDecodeParams;
namespace attn {

struct Args;

// GQA-packed decode (issue 22): the rows per tile (64 or 128) of the packed split-KV
// partial kernel that takes p (0: none), its launcher for tiles of BS rows (part_o /
// part_lse; the decode combine follows: decode.cu), and its CTAs resident at
// once on the current device (0: unknown or no sm_90a)
int DecodePackedSm90Rows(const AttentionDecodeParams& p);
template <typename T, int D, int BS>
cudaError_t LaunchDecodePartialSm90(const AttentionDecodeParams& p, cudaStream_t stream);
template <typename T, int D, int BS>
int DecodePackedSm90ResidentCtas();

// The forward of attention.h's semantics for block size BS (128: 128-row CTAs, two
// consumer warpgroups; 64: 64-row CTAs, one consumer warpgroup, two CTAs per SM) and head
// dim D (64, 96, 128, 256: 96 and 256 have no FA2 forward), T __nv_bfloat16 or __half.
// cudaErrorNotSupported on a device that is not sm_90 (or a build without sm_90a code);
// operands TMA cannot address (not 16-byte aligned) run the FA2 forward (D 64, 128;
// cudaErrorInvalidValue at D 96, 256). PINGPONG (block 128 only): the two consumer
// warpgroups take turns issuing their matrix products (one's softmax overlaps the other's
// wgmmas). Tk = 0: o = 0, lse = -inf (the FA2 forward's launcher at D 64, 128). BS 128
// also runs masks of block size 16 / 32 on its tiles (Args::mask_bits: the bits of each
// partial entry's mask blocks), at every head dim (D 256: on its 64-key sub-tiles).
// PERSISTENT: one CTA per SM (two at block 64, D < 256) looping over the (batch entry,
// head, query block) work items, longest first, the next item's loads overlapping this
// one's end (fwd_sm90.cu); the same outputs, bit for bit.
template <typename T, int D, int BS, bool PINGPONG, bool PERSISTENT>
cudaError_t LaunchForwardSm90(const Args& a, cudaStream_t stream);

// Whether the current device runs this forward: an sm_90 device and a build with sm_90a
// code (and the driver's tensor-map encoder). Queried once per device, then cached: the
// dispatch (dispatch.cu) asks on every call.
bool Sm90ForwardAvailable();

#define JBS_ATTENTION_SM90_LAUNCHERS(PREFIX, T)                                               \
  PREFIX cudaError_t LaunchForwardSm90<T, 64, 128, true, false>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardSm90<T, 64, 128, false, false>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardSm90<T, 128, 128, true, false>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardSm90<T, 128, 128, false, false>(const Args&, cudaStream_t); \
  PREFIX cudaError_t LaunchForwardSm90<T, 64, 64, false, false>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardSm90<T, 128, 64, false, false>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardSm90<T, 96, 128, true, false>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardSm90<T, 96, 128, false, false>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardSm90<T, 96, 64, false, false>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardSm90<T, 256, 128, true, false>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardSm90<T, 256, 128, false, false>(const Args&, cudaStream_t); \
  PREFIX cudaError_t LaunchForwardSm90<T, 256, 64, false, false>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardSm90<T, 64, 128, true, true>(const Args&, cudaStream_t);    \
  PREFIX cudaError_t LaunchForwardSm90<T, 64, 128, false, true>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardSm90<T, 128, 128, true, true>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardSm90<T, 128, 128, false, true>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardSm90<T, 64, 64, false, true>(const Args&, cudaStream_t);    \
  PREFIX cudaError_t LaunchForwardSm90<T, 128, 64, false, true>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardSm90<T, 96, 128, true, true>(const Args&, cudaStream_t);    \
  PREFIX cudaError_t LaunchForwardSm90<T, 96, 128, false, true>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardSm90<T, 96, 64, false, true>(const Args&, cudaStream_t);    \
  PREFIX cudaError_t LaunchForwardSm90<T, 256, 128, true, true>(const Args&, cudaStream_t);   \
  PREFIX cudaError_t LaunchForwardSm90<T, 256, 128, false, true>(const Args&, cudaStream_t);  \
  PREFIX cudaError_t LaunchForwardSm90<T, 256, 64, false, true>(const Args&, cudaStream_t);

}  // namespace attn
}  // namespace jax_blocksparse
